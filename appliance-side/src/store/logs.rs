//! The log store: every stream of every session, persisted before it is acknowledged to tether.
//!
//! One file per session, `<dir>/<session>.json.log`, in docker's json-file shape, one entry per
//! line: `{"log":"text\n","stream":"stdout","time":"2026-11-23T01:30:49.123456789Z"}`. A chunk
//! that is not UTF-8 also carries `"b64"` with its exact bytes, so the store is byte-exact.
//! Entries are cut at newlines but never held back waiting for one: a partial line is written
//! at once as its own entry (docker's readers join them). Files rotate by size; a rotated-into
//! file starts with a checkpoint line carrying the stream offsets. After a restart, scanning the
//! current file gives each stream's persisted offset: where tether resumes.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::store::logline;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn index(self) -> usize {
        self as usize
    }

    /// The name docker's json-file lines give the stream (what serde writes for it).
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Checkpoint {
    offsets: [u64; 2],
    fins: [bool; 2],
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<Stream>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b64: Option<String>,
    /// The stream ended here.
    #[serde(skip_serializing_if = "Option::is_none")]
    fin: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<Checkpoint>,
}

/// One stored piece of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stream: Stream,
    /// Offset in its stream of the entry's first byte (exact across rotation: rotated-into
    /// files start with a checkpoint of the offsets).
    pub offset: u64,
    pub time: String,
    pub unix_nanos: i128,
    pub bytes: Vec<u8>,
}

pub fn now_rfc3339() -> (String, i128) {
    let now = OffsetDateTime::now_utc();
    (
        now.format(&Rfc3339).unwrap_or_default(),
        now.unix_timestamp_nanos(),
    )
}

fn parse_time(t: &str) -> i128 {
    OffsetDateTime::parse(t, &Rfc3339).map_or(0, |t| t.unix_timestamp_nanos())
}

#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub max_files: usize,
}

/// Per session: up to 8 files of 64 MiB. Docker's json-file keeps everything by default; a
/// bound is kinder to an appliance's disk, and this one holds hundreds of MB of output.
impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_files: 8,
        }
    }
}

/// Appends one session's output.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
    state: Checkpoint,
    /// The current file was rotated into and has no checkpoint line yet.
    needs_checkpoint: bool,
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    PathBuf::from(format!("{}.{n}", path.display()))
}

impl LogWriter {
    /// Opens (creating) the session's log, recovering its offsets; a torn last line from a
    /// crash mid-write (never acknowledged) is cut off.
    pub fn open(dir: &Path, session: u32, rotation: Rotation) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{session}.json.log"));
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let (mut state, good_len) = scan(&mut file)?;
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
        }
        // Rotated into, and stopped before its first entry (its checkpoint goes with it): the
        // offsets are where the file before it ended.
        let needs_checkpoint = good_len == 0 && rotated(&path, 1).exists();
        if needs_checkpoint {
            state = scan(&mut File::open(rotated(&path, 1))?)?.0;
        }
        Ok(Self {
            path,
            file,
            size: good_len,
            rotation,
            state,
            needs_checkpoint,
        })
    }

    /// Bytes of `stream` persisted so far.
    pub fn offset(&self, stream: Stream) -> u64 {
        self.state.offsets[stream.index()]
    }

    pub fn finished(&self, stream: Stream) -> bool {
        self.state.fins[stream.index()]
    }

    fn write_lines(&mut self, lines: &[Line]) -> io::Result<()> {
        let mut out = Vec::new();
        for l in lines {
            serde_json::to_writer(&mut out, l)?;
            out.push(b'\n');
        }
        self.write_bytes(&out)
    }

    /// Writes whole entry lines, rotating first if they would not fit. All or nothing: a write
    /// that fails part way (the disk is full) is cut off again, so the file never holds a torn
    /// line that a later entry would be appended to, and the caller may retry the same lines.
    fn write_bytes(&mut self, out: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + out.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        let mut whole;
        let out = if self.needs_checkpoint {
            // A rotated-into file starts with the offsets it continues from.
            whole = serde_json::to_vec(&Line {
                checkpoint: Some(self.state.clone()),
                ..empty_line()
            })?;
            whole.push(b'\n');
            whole.extend_from_slice(out);
            &whole[..]
        } else {
            out
        };
        if let Err(e) = self.file.write_all(out) {
            if let Err(cut) = self.file.set_len(self.size) {
                tracing::error!(file = %self.path.display(), "cannot cut off a failed write: {cut}");
            }
            return Err(e);
        }
        self.size += out.len() as u64;
        self.needs_checkpoint = false;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.max_files.max(1);
        let _ = std::fs::remove_file(rotated(&self.path, keep - 1));
        for n in (1..keep.saturating_sub(1) + 1).rev() {
            let from = if n == 1 {
                self.path.clone()
            } else {
                rotated(&self.path, n - 1)
            };
            let _ = std::fs::rename(&from, rotated(&self.path, n));
        }
        if keep == 1 {
            let _ = std::fs::remove_file(&self.path);
        }
        self.file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        // Written with the first entries: one write, cut off whole if it fails.
        self.needs_checkpoint = true;
        Ok(())
    }

    /// Persists `bytes` of `stream`. When this returns, the bytes are in the kernel's page cache
    /// (they survive the server being killed); with `sync`, also on disk.
    pub fn append(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (time, _) = now_rfc3339();
        // Entries add ~60 bytes per line to the text; one allocation per chunk covers most.
        let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 2 + 128);
        let mut rest = bytes;
        while !rest.is_empty() {
            let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let (piece, tail) = rest.split_at(end);
            match std::str::from_utf8(piece) {
                Ok(s) => logline::push_entry(&mut out, s, stream.name(), &time, None),
                Err(_) => logline::push_entry(
                    &mut out,
                    &String::from_utf8_lossy(piece),
                    stream.name(),
                    &time,
                    Some(&base64::engine::general_purpose::STANDARD.encode(piece)),
                ),
            }
            rest = tail;
        }
        self.write_bytes(&out)?;
        self.state.offsets[stream.index()] += bytes.len() as u64;
        Ok(())
    }

    pub fn finish(&mut self, stream: Stream) -> io::Result<()> {
        if self.finished(stream) {
            return Ok(());
        }
        let (time, _) = now_rfc3339();
        self.write_lines(&[Line {
            stream: Some(stream),
            time: Some(time),
            fin: Some(true),
            ..empty_line()
        }])?;
        self.state.fins[stream.index()] = true;
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// The offsets after the file's complete entries, and the length of those entries: where a
/// torn or garbled line, if any, begins.
fn scan(file: &mut File) -> io::Result<(Checkpoint, u64)> {
    let mut state = Checkpoint::default();
    let mut good_len = 0u64;
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        let Ok(line) = serde_json::from_slice::<Line>(&buf) else {
            break;
        };
        apply(&mut state, &line);
        good_len += n as u64;
    }
    Ok((state, good_len))
}

fn empty_line() -> Line {
    Line {
        log: None,
        stream: None,
        time: None,
        b64: None,
        fin: None,
        checkpoint: None,
    }
}

fn apply(state: &mut Checkpoint, line: &Line) {
    if let Some(cp) = &line.checkpoint {
        *state = cp.clone();
        return;
    }
    let Some(stream) = line.stream else { return };
    if line.fin == Some(true) {
        state.fins[stream.index()] = true;
    }
    state.offsets[stream.index()] += entry_bytes(line).len() as u64;
}

fn entry_bytes(line: &Line) -> Vec<u8> {
    if let Some(b) = &line.b64 {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b) {
            return bytes;
        }
    }
    line.log.clone().unwrap_or_default().into_bytes()
}

/// Every entry of a session, oldest first, across rotated files. Rotation renames files under a
/// reader's feet; a read that saw them mid-rename (a file missing or seen twice) shows as a break
/// in the chain of checkpoints, and is done again.
pub fn read_entries(dir: &Path, session: u32) -> io::Result<Vec<Entry>> {
    let mut attempt = 0;
    loop {
        match read_entries_once(dir, session)? {
            Some(entries) => return Ok(entries),
            None if attempt >= 20 => {
                return Err(io::Error::other(
                    "the log kept rotating while being read; try again",
                ))
            }
            None => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// One pass over the files; `None` if they changed under it.
fn read_entries_once(dir: &Path, session: u32) -> io::Result<Option<Vec<Entry>>> {
    let path = dir.join(format!("{session}.json.log"));
    let mut files: Vec<PathBuf> = (1..100)
        .map(|n| rotated(&path, n))
        .take_while(|p| p.exists())
        .collect();
    files.reverse();
    files.push(path);
    let mut out = Vec::new();
    let mut position = Checkpoint::default();
    for (i, f) in files.iter().enumerate() {
        let file = match File::open(f) {
            Ok(file) => file,
            // The current file is briefly absent while it rotates.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line?;
            let Ok(l) = serde_json::from_slice::<Line>(&line) else {
                continue;
            };
            if let Some(cp) = &l.checkpoint {
                // A rotated-into file starts where the one before it ended (the oldest file
                // kept may start anywhere: older ones were deleted).
                if n == 0 && i > 0 && cp.offsets != position.offsets {
                    return Ok(None);
                }
            } else if n == 0 && i > 0 {
                return Ok(None);
            }
            let offset = l.stream.map_or(0, |s| position.offsets[s.index()]);
            apply(&mut position, &l);
            if l.checkpoint.is_some() || l.fin.is_some() {
                continue;
            }
            let (Some(stream), Some(time)) = (l.stream, l.time.clone()) else {
                continue;
            };
            out.push(Entry {
                stream,
                offset,
                unix_nanos: parse_time(&time),
                time,
                bytes: entry_bytes(&l),
            });
        }
    }
    Ok(Some(out))
}

/// The entries of a session from the given per-stream offsets on (`[stdout, stderr]`): an entry
/// that straddles its offset is cut, so a reader that resumes gets each byte exactly once.
pub fn read_entries_from(dir: &Path, session: u32, from: [u64; 2]) -> io::Result<Vec<Entry>> {
    let mut out = read_entries(dir, session)?;
    out.retain_mut(|e| {
        let start = from[e.stream.index()];
        let end = e.offset + e.bytes.len() as u64;
        if end <= start {
            return false;
        }
        if e.offset < start {
            e.bytes.drain(..(start - e.offset) as usize);
            e.offset = start;
        }
        true
    });
    Ok(out)
}

/// The bytes of one stream, concatenated (what the process wrote, exactly).
pub fn stream_bytes(dir: &Path, session: u32, stream: Stream) -> io::Result<Vec<u8>> {
    Ok(read_entries(dir, session)?
        .into_iter()
        .filter(|e| e.stream == stream)
        .flat_map(|e| e.bytes)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("logstore-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn lines_are_docker_json_file_and_bytes_are_exact() {
        let d = dir("exact");
        let mut w = LogWriter::open(&d, 1, Rotation::default()).unwrap();
        w.append(Stream::Stdout, b"hello\nwor").unwrap();
        w.append(Stream::Stdout, b"ld\n").unwrap();
        w.append(Stream::Stderr, &[0xff, 0x00, b'\n']).unwrap();
        let text = std::fs::read_to_string(d.join("1.json.log")).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["log"], "hello\n");
        assert_eq!(first["stream"], "stdout");
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            stream_bytes(&d, 1, Stream::Stdout).unwrap(),
            b"hello\nworld\n"
        );
        assert_eq!(
            stream_bytes(&d, 1, Stream::Stderr).unwrap(),
            [0xff, 0x00, b'\n']
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn reopening_recovers_offsets_and_cuts_a_torn_line() {
        let d = dir("recover");
        {
            let mut w = LogWriter::open(&d, 3, Rotation::default()).unwrap();
            w.append(Stream::Stdout, b"abc\n").unwrap();
            w.append(Stream::Stderr, b"xy").unwrap();
            w.finish(Stream::Stderr).unwrap();
        }
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join("3.json.log"))
            .unwrap();
        f.write_all(b"{\"log\":\"par").unwrap();
        drop(f);
        let mut w = LogWriter::open(&d, 3, Rotation::default()).unwrap();
        assert_eq!(w.offset(Stream::Stdout), 4);
        assert_eq!(w.offset(Stream::Stderr), 2);
        assert!(w.finished(Stream::Stderr));
        w.append(Stream::Stdout, b"def\n").unwrap();
        assert_eq!(stream_bytes(&d, 3, Stream::Stdout).unwrap(), b"abc\ndef\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn rotation_keeps_offsets_and_bounded_files() {
        let d = dir("rotate");
        let rotation = Rotation {
            max_bytes: 4096,
            max_files: 3,
        };
        let mut w = LogWriter::open(&d, 1, rotation).unwrap();
        for i in 0..500 {
            w.append(Stream::Stdout, format!("line {i:04}\n").as_bytes())
                .unwrap();
        }
        assert_eq!(w.offset(Stream::Stdout), 500 * 10);
        drop(w);
        let w = LogWriter::open(&d, 1, rotation).unwrap();
        assert_eq!(
            w.offset(Stream::Stdout),
            500 * 10,
            "checkpoint carries the offset"
        );
        assert!(d.join("1.json.log.2").exists());
        assert!(!d.join("1.json.log.3").exists(), "at most max_files files");
        let kept = stream_bytes(&d, 1, Stream::Stdout).unwrap();
        let all: Vec<u8> = (0..500)
            .flat_map(|i| format!("line {i:04}\n").into_bytes())
            .collect();
        assert!(all.ends_with(&kept), "what is kept is the newest output");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_reader_racing_rotation_sees_a_contiguous_stream() {
        let d = dir("rotate-race");
        let rotation = Rotation {
            max_bytes: 2048,
            max_files: 4,
        };
        let writer_dir = d.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer_stop = stop.clone();
        // The writer keeps appending (and rotating) until the reader has read enough times.
        let writer = std::thread::spawn(move || {
            let mut w = LogWriter::open(&writer_dir, 1, rotation).unwrap();
            let mut i = 0u32;
            while !writer_stop.load(std::sync::atomic::Ordering::Relaxed) {
                w.append(Stream::Stdout, format!("{i:07}\n").as_bytes())
                    .unwrap();
                i += 1;
            }
        });
        for _ in 0..200 {
            let entries = read_entries(&d, 1).unwrap_or_default();
            // Whatever window is kept, it is one gapless run of the stream.
            for pair in entries.windows(2) {
                assert_eq!(
                    pair[1].offset,
                    pair[0].offset + pair[0].bytes.len() as u64,
                    "a gap in a read racing rotation"
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
