//! The layer store, with the stock docker CLI against one `appliance serve`: what a second image
//! on a shared 100 MB base adds to TETHER_HOME/images (and what its layer's qcow2 holds beside
//! the layer's files), and how a container on a 5-layer qcow2 chain boots beside the same root
//! filesystem as one flattened disk, and beside the same chain re-clustered at qemu-img's
//! default 64 KiB (what the store made before its layers took 4 KiB clusters). The images are
//! `docker save` archives made here from layer tars (as tests/tests/layers.rs makes them).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use e2e::{busybox_rootfs, layer_tar, save_archive, text, workspace, Appliance};

use crate::util::du_bytes;

/// The shared base: this many incompressible files of 1 MiB.
pub const BASE_FILES: usize = 100;
/// Each small top layer: one incompressible file of this many bytes (and a line of text).
pub const SMALL_BYTES: usize = 1 << 20;
/// A third image's top layer, the same shape ten times larger: the fixed cost of a layer's disk
/// beside a layer it is a smaller share of.
pub const LARGER_BYTES: usize = 10 << 20;
/// Layers of the chained image in the boot comparison.
pub const CHAIN_LAYERS: usize = 5;
/// Each layer above busybox in the chain: one incompressible file of this many bytes.
const CHAIN_FILE_BYTES: usize = 256 << 10;
/// Directories a containerVM mounts over: in the bottom layer only (as the first runs had them).
const MOUNT_POINTS: [&str; 3] = ["proc", "sys", "dev"];

pub struct LayersRun {
    pub base_tar: u64,
    /// TETHER_HOME/images disk use after image A, and after B too.
    pub after_a: u64,
    pub after_b: u64,
    /// Layer directories in the store after A, and after B.
    pub layers_a: usize,
    pub layers_b: usize,
    /// B's own (top) layer tar.
    pub b_own_tar: u64,
    /// TETHER_HOME/images after image C (the same two lower layers and a top layer of
    /// [`LARGER_BYTES`]) too, and C's own layer tar.
    pub after_c: u64,
    pub c_own_tar: u64,
    /// B's top layer's qcow2: bytes on disk, and the guest data it holds (its allocated
    /// clusters); the rest of the file is qcow2 metadata.
    pub b_disk: u64,
    pub b_disk_data: u64,
    /// Milliseconds from spawning `docker run --rm IMAGE echo up` to its first stdout byte and
    /// to its exit, per run.
    pub chain_first: Vec<f64>,
    pub chain_exit: Vec<f64>,
    pub flat_first: Vec<f64>,
    pub flat_exit: Vec<f64>,
    /// The same chain with its layers re-clustered at 64 KiB.
    pub wide_first: Vec<f64>,
    pub wide_exit: Vec<f64>,
    /// The boot images' root filesystem: the flattened layer tar's size.
    pub rootfs_tar: u64,
}

/// Deterministic incompressible bytes (splitmix64 from `seed`).
fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed;
    let mut buf = Vec::with_capacity(len + 8);
    while buf.len() < len {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        buf.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    buf.truncate(len);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, buf).unwrap();
}

/// A layer directory `work/<name>` made by `fill`, and its tar `work/<name>.tar`.
fn layer(work: &Path, name: &str, fill: impl FnOnce(&Path)) -> PathBuf {
    let dir = work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    fill(&dir);
    let tar = work.join(format!("{name}.tar"));
    layer_tar(&dir, &tar);
    tar
}

fn small(dir: &Path, which: &str, bytes: usize, seed: u64) {
    std::fs::create_dir_all(dir.join(which)).unwrap();
    std::fs::write(dir.join(which).join("hello"), format!("image {which}\n")).unwrap();
    random_file(&dir.join(which).join("data.bin"), bytes, seed);
}

fn docker_ok(app: &Appliance, args: &[&str]) -> String {
    let out = app.docker(args);
    assert!(
        out.status.success(),
        "docker {}: {}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn load(app: &Appliance, archive: &Path) {
    docker_ok(app, &["load", "-i", archive.to_str().unwrap()]);
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn layer_dirs(app: &Appliance) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(app.home.root().join("images/layers"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The layer directories `after` has and `before` had not.
fn new_layers(before: &[PathBuf], after: &[PathBuf]) -> Vec<PathBuf> {
    after
        .iter()
        .filter(|d| !before.contains(d))
        .cloned()
        .collect()
}

fn qemu_img_json(args: &[&str], disk: &Path) -> serde_json::Value {
    let out = crate::util::run(
        std::process::Command::new("qemu-img")
            .args(args)
            .args(["--output=json"])
            .arg(disk),
    );
    serde_json::from_str(&out).expect("qemu-img's JSON")
}

/// The guest bytes a qcow2 holds itself (not from its backing file): its allocated clusters.
fn own_data(disk: &Path) -> u64 {
    let map = qemu_img_json(&["map"], disk);
    map.as_array()
        .expect("a map is a list")
        .iter()
        .filter(|e| e["depth"] == 0 && e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap_or(0))
        .sum()
}

/// Rewrites a layer's qcow2 with `cluster` byte clusters over the same backing file: the same
/// guest content, allocated as a layer applied at that cluster size would be.
fn recluster(disk: &Path, cluster: u32) {
    let info = qemu_img_json(&["info"], disk);
    let backing = info["full-backing-filename"]
        .as_str()
        .expect("a layer above the bottom has a backing file")
        .to_string();
    let tmp = disk.with_extension("reclustered");
    crate::util::run(
        std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-f", "qcow2", "-O", "qcow2", "-o"])
            .arg(format!("cluster_size={cluster}"))
            .args(["-F", "qcow2", "-B", &backing])
            .arg(disk)
            .arg(&tmp),
    );
    std::fs::rename(&tmp, disk).unwrap();
}

/// One `docker run --rm IMAGE echo up`: ms to the first stdout byte, and to exit.
fn timed_run(app: &Appliance, image: &str) -> (f64, f64) {
    let t = Instant::now();
    let mut child = app
        .docker_command(&["run", "--rm", image, "echo", "up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    let n = stdout.read(&mut first).unwrap();
    let first_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let exit_ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success() && n == 1 && first[0] == b'u' && rest == b"p\n",
        "docker run {image}: {}",
        text(&out.stderr)
    );
    (first_ms, exit_ms)
}

pub fn layers(runs: usize) -> LayersRun {
    let work = workspace().join("target/bench/layers");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();

    // Sharing: A = base + busybox + a, B = base + busybox + b.
    // The base holds the mount points, as the first runs of this bench had them (a layer above
    // may carry them too since the hold VM mounts none: tests/tests/layers.rs).
    let base = layer(&work, "base", |d| {
        for m in MOUNT_POINTS {
            std::fs::create_dir_all(d.join(m)).unwrap();
        }
        for i in 0..BASE_FILES {
            random_file(&d.join(format!("base/{i:03}")), 1 << 20, i as u64);
        }
    });
    let busybox_upper = layer(&work, "busybox-upper", |d| {
        busybox_rootfs(d);
        for m in MOUNT_POINTS {
            std::fs::remove_dir_all(d.join(m)).unwrap();
        }
    });
    let busybox = layer(&work, "busybox", busybox_rootfs);
    let own_a = layer(&work, "own-a", |d| small(d, "a", SMALL_BYTES, 1_000));
    let own_b = layer(&work, "own-b", |d| small(d, "b", SMALL_BYTES, 2_000));
    let own_c = layer(&work, "own-c", |d| small(d, "c", LARGER_BYTES, 4_000));
    let a = save_archive(
        &work,
        "image-a",
        "bench-layers-a:1",
        &[&base, &busybox_upper, &own_a],
    );
    let b = save_archive(
        &work,
        "image-b",
        "bench-layers-b:1",
        &[&base, &busybox_upper, &own_b],
    );
    let c = save_archive(
        &work,
        "image-c",
        "bench-layers-c:1",
        &[&base, &busybox_upper, &own_c],
    );

    // Boot: busybox and four layers of one file each, chained and flattened.
    let mut chain = vec![busybox.clone()];
    for i in 1..CHAIN_LAYERS {
        chain.push(layer(&work, &format!("chain{i}"), |d| {
            std::fs::create_dir_all(d.join("etc")).unwrap();
            std::fs::write(d.join(format!("etc/layer{i}")), format!("layer {i}\n")).unwrap();
            random_file(
                &d.join(format!("data/{i}.bin")),
                CHAIN_FILE_BYTES,
                3_000 + i as u64,
            );
        }));
    }
    let flat = layer(&work, "flat", |d| {
        copy_tree(&work.join("busybox"), d);
        for i in 1..CHAIN_LAYERS {
            copy_tree(&work.join(format!("chain{i}")), d);
        }
    });
    let chain_refs: Vec<&Path> = chain.iter().map(|p| p.as_path()).collect();
    let chained = save_archive(&work, "chained", "bench-layers-chain:1", &chain_refs);
    // The same chain but for one text file in its second layer (so other chain ids above the
    // shared bottom), its layers re-clustered at 64 KiB once loaded.
    let mut wide_chain = chain.clone();
    wide_chain[1] = layer(&work, "chain1-wide", |d| {
        copy_tree(&work.join("chain1"), d);
        std::fs::write(d.join("etc/variant"), "64 KiB clusters\n").unwrap();
    });
    let wide_refs: Vec<&Path> = wide_chain.iter().map(|p| p.as_path()).collect();
    let wide = save_archive(&work, "wide", "bench-layers-wide:1", &wide_refs);
    let flattened = save_archive(&work, "flattened", "bench-layers-flat:1", &[&flat]);

    let app = Appliance::start_process("bench-layers");
    let images = app.home.root().join("images");
    let t = Instant::now();
    load(&app, &a);
    let after_a = du_bytes(&images);
    let layers_a = layer_dirs(&app);
    eprintln!(
        "  layers: image A loaded in {:.1} s: images {} KiB, {} layers",
        t.elapsed().as_secs_f64(),
        after_a >> 10,
        layers_a.len()
    );
    let t = Instant::now();
    load(&app, &b);
    let after_b = du_bytes(&images);
    let layers_b = layer_dirs(&app);
    let b_top = new_layers(&layers_a, &layers_b);
    assert_eq!(b_top.len(), 1, "image B adds one layer");
    let b_disk = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(b_top[0].join("disk.qcow2"))
            .unwrap()
            .blocks()
            * 512
    };
    let b_disk_data = own_data(&b_top[0].join("disk.qcow2"));
    eprintln!(
        "  layers: image B loaded in {:.1} s: images {} KiB (+{} KiB), {} layers; its layer's \
         qcow2 {} KiB, {} KiB of it guest data",
        t.elapsed().as_secs_f64(),
        after_b >> 10,
        after_b.saturating_sub(after_a) >> 10,
        layers_b.len(),
        b_disk >> 10,
        b_disk_data >> 10,
    );
    assert_eq!(
        docker_ok(
            &app,
            &["run", "--rm", "bench-layers-b:1", "cat", "/b/hello"]
        ),
        "image b\n"
    );
    load(&app, &c);
    let after_c = du_bytes(&images);
    eprintln!(
        "  layers: image C (a {} KiB own layer) added {} KiB",
        size(&own_c) >> 10,
        after_c.saturating_sub(after_b) >> 10
    );

    load(&app, &chained);
    load(&app, &flattened);
    let before_wide = layer_dirs(&app);
    load(&app, &wide);
    let wide_layers = new_layers(&before_wide, &layer_dirs(&app));
    assert_eq!(
        wide_layers.len(),
        CHAIN_LAYERS - 1,
        "all but the shared bottom"
    );
    for l in &wide_layers {
        recluster(&l.join("disk.qcow2"), 64 << 10);
    }
    // A first run of each, untimed: all see the same files.
    let probe = "cat /etc/layer*; md5sum /data/*.bin; ls /bin | wc -l";
    let images3 = [
        "bench-layers-chain:1",
        "bench-layers-flat:1",
        "bench-layers-wide:1",
    ];
    let seen: Vec<String> = images3
        .iter()
        .map(|i| docker_ok(&app, &["run", "--rm", i, "sh", "-c", probe]))
        .collect();
    assert_eq!(seen[0], seen[1], "the chain and the flattened disk differ");
    assert_eq!(seen[0], seen[2], "the chain and its 64 KiB copy differ");
    let mut times: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    for i in 0..runs {
        // Rotate which goes first, so none always follows another.
        let mut line = format!("  layers boot {i}:");
        for k in 0..3 {
            let which = (i + k) % 3;
            let (first, exit) = timed_run(&app, images3[which]);
            times[which].0.push(first);
            times[which].1.push(exit);
            line += &format!(" {} {first:.0}/{exit:.0} ms", images3[which]);
        }
        eprintln!("{line} (first byte/exit)");
    }
    let [(chain_first, chain_exit), (flat_first, flat_exit), (wide_first, wide_exit)] = times;
    LayersRun {
        base_tar: size(&base),
        after_a,
        after_b,
        layers_a: layers_a.len(),
        layers_b: layers_b.len(),
        b_own_tar: size(&own_b),
        after_c,
        c_own_tar: size(&own_c),
        b_disk,
        b_disk_data,
        chain_first,
        chain_exit,
        flat_first,
        flat_exit,
        wide_first,
        wide_exit,
        rootfs_tar: size(&flat),
    }
}

/// `cp -a FROM/. TO/`.
fn copy_tree(from: &Path, to: &Path) {
    crate::util::run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(from.join("."))
            .arg(to),
    );
}
