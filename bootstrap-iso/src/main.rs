//! bootstrap-iso: build a containerVM's artifacts; each command prints its artifact's sha256.
//!
//!   bootstrap-iso initramfs --tether PATH -o OUT
//!   bootstrap-iso iso --kernel BZIMAGE --initramfs PATH [--append CMDLINE]... -o OUT
//!   bootstrap-iso guestinfo --spec SPEC.toml [--id ID] -o OUT.vmx
//!   bootstrap-iso disk --image PATH [--format raw|qcow2|vmdk] [--size MB] [--label L] -o OUT
//!       PATH: a `docker save` tarball, an OCI layout (directory or tar), a rootfs directory or tar
//!
//! `bootstrap-iso help COMMAND` or `bootstrap-iso COMMAND --help` says more.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bootstrap::disk::{self, Format};
use bootstrap::error::IoError;
use clap::{Args, Parser, Subcommand};
use guestinfo::contract::DEFAULT_DISK_LABEL;

#[derive(Parser)]
#[command(
    name = "bootstrap-iso",
    version,
    about = "Builds a containerVM's artifacts: the initramfs, the bootstrap ISO, image disks, \
             guestinfo. Each command prints its artifact's sha256.",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The initramfs: tether as /init, gzip-compressed cpio
    Initramfs(InitramfsArgs),
    /// The bootstrap ISO: isolinux booting the kernel with the initramfs
    Iso(IsoArgs),
    /// Guestinfo (VMX key = "value" text) from a container spec in TOML
    Guestinfo(GuestinfoArgs),
    /// An image disk: the image's root filesystem as ext4, in raw, qcow2 or VMDK
    Disk(DiskArgs),
}

/// `-o OUT`, which every command takes.
#[derive(Args)]
struct Output {
    /// Where to write the artifact (replaced if it exists)
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    out: PathBuf,
}

#[derive(Args)]
struct InitramfsArgs {
    /// The static tether binary (`make tether` builds it)
    #[arg(long, value_name = "PATH")]
    tether: PathBuf,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct IsoArgs {
    /// The kernel (`make kernel` builds it)
    #[arg(long, value_name = "BZIMAGE")]
    kernel: PathBuf,
    /// The initramfs (`bootstrap-iso initramfs` builds it)
    #[arg(long, value_name = "PATH")]
    initramfs: PathBuf,
    /// The kernel command line, instead of the default; repeat it to add words
    /// [default: "console=ttyS0 panic=-1 no_timer_check quiet"]
    #[arg(long, value_name = "CMDLINE", allow_hyphen_values = true)]
    append: Vec<String>,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct GuestinfoArgs {
    /// The container spec (TOML: name, secret, [main] cmd, ...)
    #[arg(long, value_name = "SPEC.toml")]
    spec: PathBuf,
    /// The container id, when the spec names none
    #[arg(long, value_name = "ID", default_value = "container")]
    id: String,
    #[command(flatten)]
    output: Output,
}

#[derive(Args)]
struct DiskArgs {
    /// A `docker save` tarball, an OCI layout (directory or tar), or a rootfs directory or tarball
    #[arg(long, value_name = "PATH", visible_aliases = ["rootfs", "tar"])]
    image: PathBuf,
    /// The disk format: raw, qcow2 or vmdk
    #[arg(long, value_name = "FORMAT", default_value = "raw")]
    format: Format,
    /// The filesystem size in MiB; 0 sizes it from the content
    #[arg(long, value_name = "MB", default_value_t = 0)]
    size: u64,
    /// The ext4 label the guest mounts the disk by
    #[arg(long, value_name = "L", default_value = DEFAULT_DISK_LABEL)]
    label: String,
    #[command(flatten)]
    output: Output,
}

/// What can go wrong in a command: the library's errors, and reading or writing the files named
/// on the command line.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("tether {}: {source} (`make tether` builds it)", path.display())]
    Tether { path: PathBuf, source: io::Error },
    #[error("spec {}: {source}", path.display())]
    Spec { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Iso(#[from] bootstrap::iso::Error),
    #[error(transparent)]
    SpecToml(#[from] bootstrap::spec_toml::Error),
    #[error(transparent)]
    Image(#[from] bootstrap::image::Error),
    /// `disk` and `initramfs` report through `io::Error`; the message names file or tool.
    #[error(transparent)]
    Build(#[from] io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = match &cli.command {
        Command::Initramfs(a) => &a.output.out,
        Command::Iso(a) => &a.output.out,
        Command::Guestinfo(a) => &a.output.out,
        Command::Disk(a) => &a.output.out,
    }
    .clone();
    let result = match cli.command {
        Command::Initramfs(a) => initramfs(&a).map(|()| None),
        Command::Iso(a) => iso(&a).map(|()| None),
        Command::Guestinfo(a) => guestinfo(&a).map(|()| None),
        Command::Disk(a) => build_disk(&a).map(Some),
    }
    .and_then(|cleanup| {
        let sum = disk::sha256_file(&out).map_err(IoError::at(&out));
        if let Some(cleanup) = cleanup {
            let _ = cleanup.join();
        }
        Ok(sum?)
    });
    match result {
        Ok(sum) => {
            println!("{sum}  {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bootstrap-iso: {e}");
            ExitCode::from(2)
        }
    }
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) -> Result<(), Error> {
    Ok(std::fs::write(path, bytes).map_err(IoError::at(path))?)
}

fn initramfs(a: &InitramfsArgs) -> Result<(), Error> {
    let bin = std::fs::read(&a.tether).map_err(|source| Error::Tether {
        path: a.tether.clone(),
        source,
    })?;
    write(&a.output.out, bootstrap::initramfs::build(&bin)?)
}

fn iso(a: &IsoArgs) -> Result<(), Error> {
    let append = if a.append.is_empty() {
        bootstrap::iso::DEFAULT_APPEND.to_string()
    } else {
        a.append.join(" ")
    };
    Ok(bootstrap::iso::build(
        &a.kernel,
        &a.initramfs,
        &append,
        &a.output.out,
    )?)
}

fn guestinfo(a: &GuestinfoArgs) -> Result<(), Error> {
    let text = std::fs::read_to_string(&a.spec).map_err(|source| Error::Spec {
        path: a.spec.clone(),
        source,
    })?;
    write(&a.output.out, bootstrap::spec_toml::to_vmx(&text, &a.id)?)
}

/// Builds the disk; its work directory (the unpacked rootfs) is then removed by the thread
/// returned, while the caller hashes the disk: deleting a 200 MB tree is kernel work on one
/// core, hashing the disk user work on the other (`make bench`, image disk build).
fn build_disk(a: &DiskArgs) -> Result<std::thread::JoinHandle<()>, Error> {
    let out = &a.output.out;
    let work = out.with_extension("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(IoError::at(&work))?;
    if let Err(e) = image_to_disk(a, &work) {
        let _ = std::fs::remove_dir_all(&work);
        return Err(e);
    }
    Ok(std::thread::spawn(move || {
        let _ = std::fs::remove_dir_all(&work);
    }))
}

fn image_to_disk(a: &DiskArgs, work: &Path) -> Result<(), Error> {
    let out = &a.output.out;
    let rootfs = bootstrap::image::materialize(&a.image, work)?;
    let raw = if a.format == Format::Raw {
        out.to_path_buf()
    } else {
        work.join("disk.raw")
    };
    eprintln!("bootstrap-iso: building ext4 ({})", a.label);
    disk::ext4_from_dir(&rootfs, &raw, &a.label, a.size)?;
    if a.format != Format::Raw {
        eprintln!("bootstrap-iso: converting to {:?}", a.format);
        disk::convert(&raw, out, a.format)?;
    }
    Ok(())
}
