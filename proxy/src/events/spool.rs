//! The event spool: events Kafka did not take, on disk, in order, bounded in bytes.
//!
//! A directory of append-only segment files named by a growing sequence number
//! (`00000000000000000001.seg`), one JSON [`Event`] per line. New events are appended to the newest
//! segment (a new one past [`SEGMENT_BYTES`]); replay reads the oldest segment whole into memory,
//! hands its events out in order, and deletes the file once every one of them was delivered. A
//! spool that would grow past its bound refuses the event (the caller drops and counts it).
//!
//! Lines are written without fsync: the spool covers a broker outage, not a host crash. After a
//! process restart the spool is picked up again; a segment that was half replayed is replayed
//! whole, so a consumer may see an event twice then (events carry a unique `id` to dedupe on).
//!
//! One process owns a spool at a time: an exclusive lock on `.lock` in the directory, held while
//! the [`Spool`] lives. During an in-place upgrade (`proxy --upgrade`) the old process still drains
//! with the spool open; the new one waits for the lock (see [`Spool::try_open`]).

use super::Event;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// A segment is closed for appends past this size.
pub const SEGMENT_BYTES: u64 = 1024 * 1024;

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes of every segment on disk.
    bytes: u64,
    /// Sequence numbers of the segments on disk, oldest first (the loaded head included).
    segments: VecDeque<u64>,
    /// The newest segment, open for appends, and its size.
    writer: Option<(u64, File, u64)>,
    /// The oldest segment's events, loaded for replay; `None` once delivered.
    head: VecDeque<Option<Event>>,
    /// The loaded segment's sequence number and size.
    head_seg: Option<(u64, u64)>,
    /// The directory's lock, held for as long as this spool lives.
    _lock: File,
}

fn lock_file(dir: &Path) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, picking up the segments a previous run left; waits
    /// while another process holds it.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        let lock = lock_file(dir)?;
        lock.lock()?;
        Spool::load(dir, max_bytes, lock)
    }

    /// [`Spool::open`] without waiting: `None` while another process holds the spool.
    pub fn try_open(dir: &Path, max_bytes: u64) -> io::Result<Option<Spool>> {
        let lock = lock_file(dir)?;
        match lock.try_lock() {
            Ok(()) => Spool::load(dir, max_bytes, lock).map(Some),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn load(dir: &Path, max_bytes: u64, lock: File) -> io::Result<Spool> {
        let mut segments = Vec::new();
        let mut bytes = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let seq = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(seq) = seq {
                bytes += entry.metadata()?.len();
                segments.push(seq);
            }
        }
        segments.sort_unstable();
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            bytes,
            segments: segments.into(),
            writer: None,
            head: VecDeque::new(),
            head_seg: None,
            _lock: lock,
        })
    }

    /// Whether any event waits for replay.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.seg"))
    }

    /// Appends `e` behind everything spooled. `Ok(false)`: the spool is full and `e` was not kept.
    pub fn append(&mut self, e: &Event) -> io::Result<bool> {
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if self.bytes + len > self.max_bytes {
            return Ok(false);
        }
        if self.writer.as_ref().is_none_or(|w| w.2 >= SEGMENT_BYTES) {
            let seq = self.segments.back().map_or(1, |s| s + 1);
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.path(seq))?;
            self.segments.push_back(seq);
            self.writer = Some((seq, file, 0));
        }
        if let Some((_, file, size)) = self.writer.as_mut() {
            file.write_all(&line)?;
            *size += len;
        }
        self.bytes += len;
        Ok(true)
    }

    /// Up to `n` of the oldest undelivered events, with their positions for [`Spool::delivered`].
    /// Loads the oldest segment when none is loaded (closing it for appends first).
    pub fn peek(&mut self, n: usize) -> io::Result<Vec<(usize, Event)>> {
        if self.head_seg.is_none() {
            self.load_head()?;
        }
        Ok(self
            .head
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, e.clone())))
            .take(n)
            .collect())
    }

    fn load_head(&mut self) -> io::Result<()> {
        let Some(&seq) = self.segments.front() else {
            return Ok(());
        };
        if self.writer.as_ref().is_some_and(|w| w.0 == seq) {
            self.writer = None;
        }
        let path = self.path(seq);
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        for line in BufReader::new(file).lines() {
            match serde_json::from_str::<Event>(&line?) {
                Ok(e) => self.head.push_back(Some(e)),
                // A line cut by a crash mid-write: nothing to replay.
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "spool: unreadable line skipped")
                }
            }
        }
        self.head_seg = Some((seq, size));
        Ok(())
    }

    /// Marks the events at `positions` (from the last [`Spool::peek`]) delivered; a segment whose
    /// events are all delivered is deleted.
    pub fn delivered(&mut self, positions: &[usize]) -> io::Result<()> {
        for &i in positions {
            if let Some(slot) = self.head.get_mut(i) {
                *slot = None;
            }
        }
        if self.head.iter().any(Option::is_some) {
            return Ok(());
        }
        self.head.clear();
        if let Some((seq, size)) = self.head_seg.take() {
            fs::remove_file(self.path(seq))?;
            self.segments.pop_front();
            self.bytes = self.bytes.saturating_sub(size);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
