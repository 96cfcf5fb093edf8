//! Image disks: a root filesystem (directory or plain tarball) becomes an ext4 filesystem labelled
//! `containerfs`, then raw, qcow2 or VMDK. Builds are reproducible: the UUID and directory hash
//! seed derive from the content, mke2fs runs with `E2FSPROGS_FAKE_TIME`, and one debugfs pass sets
//! the times mke2fs copies from the host (ctime, atime) to zero.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
    Vmdk,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "raw" => Some(Self::Raw),
            "qcow2" => Some(Self::Qcow2),
            "vmdk" => Some(Self::Vmdk),
            _ => None,
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> io::Result<()> {
    let out = cmd.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{what}: cannot run {:?}: {e} (run `make deps`)",
                cmd.get_program()
            ),
        )
    })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Every path under `root`, sorted, relative with a leading slash, and a content digest.
fn walk(root: &Path) -> io::Result<(Vec<String>, [u8; 32], u64)> {
    let mut paths = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let mut names: Vec<_> = std::fs::read_dir(&full)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let child = rel.join(&name);
            let path = root.join(&child);
            let meta = std::fs::symlink_metadata(&path)?;
            let display = format!("/{}", child.display());
            hasher.update(display.as_bytes());
            hasher.update([0]);
            use std::os::unix::fs::MetadataExt;
            hasher.update(meta.mode().to_le_bytes());
            hasher.update(meta.uid().to_le_bytes());
            hasher.update(meta.gid().to_le_bytes());
            hasher.update(meta.mtime().to_le_bytes());
            if meta.file_type().is_symlink() {
                hasher.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                let mut f = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                bytes += meta.len();
            } else if meta.is_dir() {
                stack.push(child.clone());
            }
            paths.push(display);
        }
    }
    paths.sort();
    Ok((paths, hasher.finalize().into(), bytes))
}

/// A digest of a rootfs directory's paths, modes, owners, mtimes and contents: the cache key of
/// the disk built from it.
pub fn dir_digest(root: &Path) -> io::Result<String> {
    let (_, digest, _) = walk(root)?;
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

fn uuid_from(digest: &[u8; 32]) -> String {
    let h: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Builds a raw ext4 image of `rootfs` at `out`, labelled `label`. `size_mb` of 0 sizes it from
/// the content (one and a half times, plus 32 MiB of room).
pub fn ext4_from_dir(rootfs: &Path, out: &Path, label: &str, size_mb: u64) -> io::Result<()> {
    let (paths, digest, bytes) = walk(rootfs)?;
    let size_mb = if size_mb == 0 {
        (bytes * 3 / 2) / (1024 * 1024) + 32 + paths.len() as u64 / 256
    } else {
        size_mb
    };
    let uuid = uuid_from(&digest);
    let _ = std::fs::remove_file(out);
    run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .args(["-q", "-F", "-b", "4096", "-L", label, "-U", &uuid])
            .arg("-E")
            .arg(format!("hash_seed={uuid},root_owner=0:0"))
            .arg("-d")
            .arg(rootfs)
            .arg(out)
            .arg(format!("{size_mb}M")),
        "mkfs.ext4",
    )?;
    // mke2fs copies ctime and atime from the host's files; pin them.
    let mut script = String::from("sif / ctime 0\nsif / atime 0\n");
    for p in &paths {
        script.push_str(&format!("sif \"{p}\" ctime 0\nsif \"{p}\" atime 0\n"));
    }
    let cmds = out.with_extension("debugfs");
    std::fs::write(&cmds, script)?;
    let r = run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", "1")
            .args(["-w", "-f"])
            .arg(&cmds)
            .arg(out),
        "debugfs",
    );
    let _ = std::fs::remove_file(&cmds);
    r
}

/// Extracts a plain rootfs tarball into `dir` (ownership, modes and mtimes as recorded, those of
/// directories included).
pub fn extract_tar(tarball: &Path, dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::File::open(tarball)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", tarball.display())))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.unpack(dir)?;
    crate::dirtimes::DirTimes::of_tarball(tarball, dir)?.apply()
}

/// Converts a raw image to `format` (a no-op copy for raw).
pub fn convert(raw: &Path, out: &Path, format: Format) -> io::Result<()> {
    let fmt = match format {
        Format::Raw => {
            if raw != out {
                std::fs::copy(raw, out)?;
            }
            return Ok(());
        }
        Format::Qcow2 => "qcow2",
        Format::Vmdk => "vmdk",
    };
    run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", fmt])
            .arg(raw)
            .arg(out),
        "qemu-img convert",
    )?;
    if format == Format::Vmdk {
        pin_vmdk_cid(out, &sha256_file(raw)?)?;
    }
    Ok(())
}

/// qemu-img writes a random content id into the VMDK's text descriptor, in hex without leading
/// zeros (`CID=%x`: one build in sixteen has a shorter line). Replace it with eight hex digits of
/// the raw image's digest, re-laying the rest of the descriptor into its zero padding, so the
/// same content always gives the same VMDK whatever CID qemu-img drew.
fn pin_vmdk_cid(vmdk: &Path, raw_digest: &str) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vmdk)?;
    let mut head = vec![0u8; 64 * 1024];
    let n = f.read(&mut head)?;
    head.truncate(n);
    pin_cid_in(&mut head, &raw_digest[..8])?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&head)
}

/// Rewrites `CID=<hex>\n` in a descriptor held in `head` to `CID=<cid>\n`; the text after it
/// moves within the zero padding that follows the descriptor.
fn pin_cid_in(head: &mut [u8], cid: &str) -> io::Result<()> {
    let missing = || io::Error::other("no CID= line in the VMDK descriptor");
    let at = head
        .windows(4)
        .position(|w| w == b"CID=")
        .ok_or_else(missing)?
        + 4;
    let nl = at
        + head[at..]
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(missing)?;
    let text_end = nl
        + head[nl..]
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(missing)?;
    let mut text = cid.as_bytes().to_vec();
    text.extend_from_slice(&head[nl..text_end]);
    let region_end = at + text.len().max(text_end - at);
    if region_end > head.len() || head[text_end..region_end].iter().any(|b| *b != 0) {
        return Err(io::Error::other(
            "no room in the VMDK descriptor for the CID",
        ));
    }
    head[at..region_end].fill(0);
    head[at..at + text.len()].copy_from_slice(&text);
    Ok(())
}

/// The sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut HashWriter(&mut h))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod cid_tests {
    use super::pin_cid_in;

    fn descriptor(cid: &str) -> Vec<u8> {
        let mut d = format!("# Disk DescriptorFile\nversion=1\nCID={cid}\nparentCID=ffffffff\n")
            .into_bytes();
        d.resize(512, 0);
        d
    }

    #[test]
    fn any_cid_qemu_img_draws_gives_the_same_bytes() {
        let mut short = descriptor("5d0ef9");
        let mut full = descriptor("bc5d0ef9");
        pin_cid_in(&mut short, "0123abcd").unwrap();
        pin_cid_in(&mut full, "0123abcd").unwrap();
        assert_eq!(short, full);
        assert!(String::from_utf8_lossy(&full).contains("CID=0123abcd\nparentCID=ffffffff\n"));
    }
}
