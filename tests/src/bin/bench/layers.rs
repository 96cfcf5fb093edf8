//! The layer store, with the stock docker CLI against one `appliance serve`: what a second image
//! on a shared 100 MB base adds to TETHER_HOME/images, and how a container on a 5-layer qcow2
//! chain boots beside the same root filesystem as one flattened disk. The images are `docker
//! save` archives made here from layer tars (as tests/tests/layers.rs makes them).

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
/// Layers of the chained image in the boot comparison.
pub const CHAIN_LAYERS: usize = 5;
/// Each layer above busybox in the chain: one incompressible file of this many bytes.
const CHAIN_FILE_BYTES: usize = 256 << 10;
/// Directories a containerVM mounts over: in the bottom layer only.
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
    /// Milliseconds from spawning `docker run --rm IMAGE echo up` to its first stdout byte and
    /// to its exit, per run.
    pub chain_first: Vec<f64>,
    pub chain_exit: Vec<f64>,
    pub flat_first: Vec<f64>,
    pub flat_exit: Vec<f64>,
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

fn small(dir: &Path, which: &str, seed: u64) {
    std::fs::create_dir_all(dir.join(which)).unwrap();
    std::fs::write(dir.join(which).join("hello"), format!("image {which}\n")).unwrap();
    random_file(&dir.join(which).join("data.bin"), SMALL_BYTES, seed);
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

fn layer_dirs(app: &Appliance) -> usize {
    std::fs::read_dir(app.home.root().join("images/layers")).map_or(0, |d| d.count())
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
    // The base holds the mount points too: a layer above the bottom that carries /proc, /sys or
    // /dev fails to apply (the hold VM has them mounted; see docs/benchmarks.md).
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
    let own_a = layer(&work, "own-a", |d| small(d, "a", 1_000));
    let own_b = layer(&work, "own-b", |d| small(d, "b", 2_000));
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
        let mut script = String::from("set -e");
        for name in std::iter::once("busybox".to_string())
            .chain((1..CHAIN_LAYERS).map(|i| format!("chain{i}")))
        {
            script += &format!("; cp -a {}/. {}/", work.join(name).display(), d.display());
        }
        crate::util::run(std::process::Command::new("sh").args(["-c", &script]));
    });
    let chain_refs: Vec<&Path> = chain.iter().map(|p| p.as_path()).collect();
    let chained = save_archive(&work, "chained", "bench-layers-chain:1", &chain_refs);
    let flattened = save_archive(&work, "flattened", "bench-layers-flat:1", &[&flat]);

    let app = Appliance::start_process("bench-layers");
    let images = app.home.root().join("images");
    let t = Instant::now();
    load(&app, &a);
    let after_a = du_bytes(&images);
    let layers_a = layer_dirs(&app);
    eprintln!(
        "  layers: image A loaded in {:.1} s: images {} KiB, {layers_a} layers",
        t.elapsed().as_secs_f64(),
        after_a >> 10
    );
    let t = Instant::now();
    load(&app, &b);
    let after_b = du_bytes(&images);
    let layers_b = layer_dirs(&app);
    eprintln!(
        "  layers: image B loaded in {:.1} s: images {} KiB (+{} KiB), {layers_b} layers",
        t.elapsed().as_secs_f64(),
        after_b >> 10,
        after_b.saturating_sub(after_a) >> 10
    );
    assert_eq!(
        docker_ok(
            &app,
            &["run", "--rm", "bench-layers-b:1", "cat", "/b/hello"]
        ),
        "image b\n"
    );

    load(&app, &chained);
    load(&app, &flattened);
    // A first run of each, untimed: both see the same files.
    let probe = "cat /etc/layer*; md5sum /data/*.bin; ls /bin | wc -l";
    let seen: Vec<String> = ["bench-layers-chain:1", "bench-layers-flat:1"]
        .iter()
        .map(|i| docker_ok(&app, &["run", "--rm", i, "sh", "-c", probe]))
        .collect();
    assert_eq!(seen[0], seen[1], "the chain and the flattened disk differ");
    let (mut chain_first, mut chain_exit, mut flat_first, mut flat_exit) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        // Alternate which goes first, so neither always follows the other.
        let (c, f) = if i % 2 == 0 {
            let c = timed_run(&app, "bench-layers-chain:1");
            (c, timed_run(&app, "bench-layers-flat:1"))
        } else {
            let f = timed_run(&app, "bench-layers-flat:1");
            (timed_run(&app, "bench-layers-chain:1"), f)
        };
        eprintln!(
            "  layers boot {i}: chain {:.0}/{:.0} ms, flat {:.0}/{:.0} ms (first byte/exit)",
            c.0, c.1, f.0, f.1
        );
        chain_first.push(c.0);
        chain_exit.push(c.1);
        flat_first.push(f.0);
        flat_exit.push(f.1);
    }
    LayersRun {
        base_tar: size(&base),
        after_a,
        after_b,
        layers_a,
        layers_b,
        b_own_tar: size(&own_b),
        chain_first,
        chain_exit,
        flat_first,
        flat_exit,
        rootfs_tar: size(&flat),
    }
}
