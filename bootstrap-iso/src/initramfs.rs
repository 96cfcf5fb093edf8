//! The initramfs: tether as `/init`, the mount points it uses, and `/dev/console` (the kernel
//! opens it for init's stdio before anything is mounted). Nothing else: no shell, no libc.

use std::io;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

use crate::cpio::{Entry, Kind, Writer};

/// Builds the gzip-compressed cpio archive. Same tether bytes in, same archive bytes out.
pub fn build(tether: &[u8]) -> io::Result<Vec<u8>> {
    let dir = |p: &str| Entry {
        path: p.into(),
        mode: 0o755,
        kind: Kind::Dir,
    };
    let entries = vec![
        dir("dev"),
        Entry {
            path: "dev/console".into(),
            mode: 0o600,
            kind: Kind::CharDev(5, 1),
        },
        Entry {
            path: "init".into(),
            mode: 0o755,
            kind: Kind::File(tether.to_vec()),
        },
        dir("mnt"),
        dir("proc"),
        dir("run"),
        dir("sys"),
    ];
    // GzBuilder writes mtime 0 and no file name: the header does not vary between builds.
    let gz: GzEncoder<Vec<u8>> = GzBuilder::new().write(Vec::new(), Compression::best());
    let mut w = Writer::new(gz, 0);
    for e in &entries {
        w.entry(e)?;
    }
    w.finish()?.finish()
}
