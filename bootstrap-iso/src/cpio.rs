//! A writer for the cpio "newc" format the kernel unpacks as an initramfs. Output is
//! reproducible: entries in the order given, inode numbers from 1, mtimes fixed.

use std::io::{self, Write};

/// What an entry is.
#[derive(Debug, Clone)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    /// A character device (major, minor).
    CharDev(u32, u32),
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// Path without a leading slash, e.g. `dev/console`.
    pub path: String,
    pub mode: u32,
    pub kind: Kind,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

pub struct Writer<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    mtime: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
            mtime,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        size: u32,
        rdev: (u32, u32),
        nlink: u32,
    ) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let name_len = name.len() as u32 + 1;
        let header = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
             {dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{name_len:08X}{check:08X}",
            uid = 0,
            gid = 0,
            mtime = self.mtime,
            dmaj = 0,
            dmin = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            check = 0,
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()
    }

    pub fn entry(&mut self, e: &Entry) -> io::Result<()> {
        let perm = e.mode & 0o7777;
        match &e.kind {
            Kind::Dir => self.header(&e.path, S_IFDIR | perm, 0, (0, 0), 2),
            Kind::File(data) => {
                self.header(&e.path, S_IFREG | perm, data.len() as u32, (0, 0), 1)?;
                self.put(data)?;
                self.pad4()
            }
            Kind::CharDev(major, minor) => {
                self.header(&e.path, S_IFCHR | perm, 0, (*major, *minor), 1)
            }
        }
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, (0, 0), 1)?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 110-byte newc header: magic, then 13 eight-digit hex fields (ino is the second).
    fn field(header: &[u8], i: usize) -> u32 {
        let at = 6 + 8 * i;
        u32::from_str_radix(std::str::from_utf8(&header[at..at + 8]).unwrap(), 16).unwrap()
    }

    #[test]
    fn entries_are_newc_padded_to_four_bytes_and_end_with_the_trailer() {
        let mut w = Writer::new(Vec::new(), 0);
        w.entry(&Entry {
            path: "init".into(),
            mode: 0o755,
            kind: Kind::File(b"hello".to_vec()),
        })
        .unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(field(&out, 0), 1, "inode numbers start at 1");
        assert_eq!(field(&out, 1), S_IFREG | 0o755);
        assert_eq!(field(&out, 6), 5, "file size");
        // Header (110) + "init\0" (5) padded to 116, then the data padded to 4.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..121], b"hello");
        let trailer = &out[124..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        assert_eq!(out.len() % 4, 0);
    }
}
