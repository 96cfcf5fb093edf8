//! bootstrap-iso: build a containerVM's artifacts; each prints its sha256.
//!
//!   bootstrap-iso initramfs --tether PATH -o OUT
//!   bootstrap-iso iso --kernel BZIMAGE --initramfs PATH [--append CMDLINE] -o OUT
//!   bootstrap-iso guestinfo --spec SPEC.toml [--id ID] -o OUT.vmx
//!   bootstrap-iso disk --image PATH [--format raw|qcow2|vmdk] [--size MB] [--label L] -o OUT
//!       PATH: a `docker save` tarball, an OCI layout (directory or tar), a rootfs directory or tar

use std::path::PathBuf;
use std::process::ExitCode;

use bootstrap::disk::{self, Format};

const USAGE: &str = "usage:
  bootstrap-iso initramfs --tether PATH -o OUT
  bootstrap-iso iso --kernel BZIMAGE --initramfs PATH [--append CMDLINE] -o OUT
  bootstrap-iso guestinfo --spec SPEC.toml [--id ID] -o OUT.vmx
  bootstrap-iso disk --image PATH [--format raw|qcow2|vmdk] [--size MB] [--label L] -o OUT
      PATH: a docker save tarball, an OCI layout (dir or tar), a rootfs dir or tar";

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("bootstrap-iso: {msg}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return fail(USAGE);
    };
    let mut opts = std::collections::HashMap::new();
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else {
            return fail(format!("{flag} needs a value\n{USAGE}"));
        };
        opts.insert(flag.as_str(), v.clone());
    }
    let Some(out) = opts.get("-o").map(PathBuf::from) else {
        return fail(format!("-o OUT is required\n{USAGE}"));
    };
    let result = match cmd.as_str() {
        "initramfs" => {
            let Some(tether) = opts.get("--tether") else {
                return fail(format!(
                    "--tether PATH is required (make tether builds it)\n{USAGE}"
                ));
            };
            std::fs::read(tether)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{tether}: {e}")))
                .and_then(|bin| bootstrap::initramfs::build(&bin))
                .and_then(|img| std::fs::write(&out, img))
        }
        "iso" => {
            let (Some(kernel), Some(initramfs)) = (opts.get("--kernel"), opts.get("--initramfs"))
            else {
                return fail(format!(
                    "--kernel and --initramfs are required (make kernel; bootstrap-iso initramfs)\n{USAGE}"
                ));
            };
            let append = opts
                .get("--append")
                .cloned()
                .unwrap_or_else(|| bootstrap::iso::DEFAULT_APPEND.to_string());
            bootstrap::iso::build(kernel.as_ref(), initramfs.as_ref(), &append, &out)
        }
        "guestinfo" => {
            let Some(spec) = opts.get("--spec") else {
                return fail(format!("--spec SPEC.toml is required\n{USAGE}"));
            };
            let id = opts
                .get("--id")
                .cloned()
                .unwrap_or_else(|| "container".into());
            match std::fs::read_to_string(spec)
                .map_err(|e| format!("{spec}: {e}"))
                .and_then(|t| bootstrap::spec_toml::to_vmx(&t, &id))
            {
                Ok(vmx) => std::fs::write(&out, vmx),
                Err(e) => return fail(e),
            }
        }
        "disk" => {
            let f = opts.get("--format").map(String::as_str).unwrap_or("raw");
            let Some(format) = Format::parse(f) else {
                return fail(format!("unknown format {f:?}: use raw, qcow2 or vmdk"));
            };
            let size: u64 = match opts.get("--size").map(|s| s.parse()) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => return fail("--size takes a number of MiB"),
            };
            let label = opts
                .get("--label")
                .cloned()
                .unwrap_or_else(|| "containerfs".into());
            build_disk(&opts, &out, &label, size, format)
        }
        other => return fail(format!("unknown command {other:?}\n{USAGE}")),
    };
    if let Err(e) = result {
        return fail(e);
    }
    match disk::sha256_file(&out) {
        Ok(sum) => {
            println!("{sum}  {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn build_disk(
    opts: &std::collections::HashMap<&str, String>,
    out: &std::path::Path,
    label: &str,
    size: u64,
    format: Format,
) -> std::io::Result<()> {
    let work = out.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let input = opts
        .get("--image")
        .or(opts.get("--rootfs"))
        .or(opts.get("--tar"))
        .ok_or_else(|| std::io::Error::other("--image PATH is required"))?;
    let rootfs = bootstrap::image::materialize(std::path::Path::new(input), &work)?;
    let raw = if format == Format::Raw {
        out.to_path_buf()
    } else {
        work.join("disk.raw")
    };
    eprintln!("bootstrap-iso: building ext4 ({label})");
    disk::ext4_from_dir(&rootfs, &raw, label, size)?;
    if format != Format::Raw {
        eprintln!("bootstrap-iso: converting to {format:?}");
        disk::convert(&raw, out, format)?;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
