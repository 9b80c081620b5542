//! Segment files of the message log: create (preallocated, directory fsynced),
//! append, sync, delete, and read back at start, past damage (`scan.rs`), which is
//! reported, copied to `DIR/damaged/` and padded over. Knows bytes and records, not what they mean (that is `state.rs`).
//!
//! A segment is `DIR/<id, 20 digits>.seg`: a 40-byte header (magic, format
//! version, segment id, first record sequence, salt, CRC32 of the header; format
//! 1: 32 bytes without the salt) followed by records (`record.rs`). Segments are preallocated to `segment_size` so appends do
//! not change the file size (no metadata journal write per fsync on most file
//! systems); the unused tail is zeros, which reads as the end of the log.

use super::record::{self, Op};
use super::scan::{self, Damage};
use crate::clock::Clock;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tracing::{error, info, warn};

pub const MAGIC: &[u8; 8] = b"TERNLOG\0";
/// Bumped whenever the record format changes incompatibly. 2: a random salt in
/// the segment header, mixed into every record's CRC (`record.rs`), and padding
/// records written over repaired damage. Format 1 segments are still read.
pub const FORMAT_VERSION: u32 = 2;
/// The header of a format 2 segment (format 1: 32 bytes, no salt).
pub const SEGMENT_HEADER: u64 = 40;
const HEADER_V1: usize = 32;

/// The segment currently appended to.
struct Head {
    id: u64,
    file: File,
    /// Where the next record goes.
    len: u64,
    /// Written but not yet fsynced.
    dirty: bool,
    /// None: a format 1 segment reopened for appending.
    salt: Option<u64>,
}

pub struct Log {
    dir: PathBuf,
    segment_size: u64,
    /// None while a new head could not be created (no space): nothing can be
    /// appended until `ensure_head` succeeds.
    head: Option<Head>,
    /// The id of the head, or of the next one to create.
    head_id: u64,
    /// The first sequence of the head to create.
    head_first: u64,
    /// Sealed segments by id, with their on-disk size, oldest first.
    sealed: std::collections::BTreeMap<u64, u64>,
    next_seq: u64,
    /// Sealed segments open for reading records back (work-queue messages),
    /// with their salt; the most recently used last, at most `READERS`.
    readers: Vec<(u64, File, Option<u64>)>,
    /// Kept open for the process's lifetime: the advisory lock on the directory.
    _lock: File,
}

/// Sealed segments kept open for reads: a queue's backlog is read in log order,
/// so one or two are in use at a time.
const READERS: usize = 4;

/// One record read back at start.
pub struct Replayed {
    pub segment: u64,
    /// Where it starts in its segment file.
    pub offset: u32,
    pub len: u32,
    pub op: Op,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A salt no peer can guess (it never leaves the disk).
fn new_salt() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No system randomness: still different per segment and per process.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
    }
    u64::from_le_bytes(b)
}

fn header(id: u64, first_seq: u64, salt: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&id.to_le_bytes());
    h[20..28].copy_from_slice(&first_seq.to_le_bytes());
    h[28..36].copy_from_slice(&salt.to_le_bytes());
    let crc = crc32fast::hash(&h[..36]);
    h[36..40].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a segment's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SegHeader {
    first_seq: u64,
    /// None: format 1.
    salt: Option<u64>,
    /// Where the first record starts.
    len: usize,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Parse a segment header (format 1 or 2) of segment `id`.
fn parse_header(h: &[u8], id: u64) -> Result<SegHeader, String> {
    if h.len() < HEADER_V1 {
        return Err("shorter than its header".into());
    }
    if &h[..8] != MAGIC {
        return Err("not a Tern log segment (bad magic)".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let (salt, len) = match version {
        1 => (None, HEADER_V1),
        2 if h.len() >= SEGMENT_HEADER as usize => (Some(le_u64(&h[28..36])), 40),
        2 => return Err("shorter than its header".into()),
        v => return Err(format!("format version {v}, this Tern reads 1 and 2")),
    };
    let crc = u32::from_le_bytes([h[len - 4], h[len - 3], h[len - 2], h[len - 1]]);
    if crc32fast::hash(&h[..len - 4]) != crc {
        return Err("header checksum mismatch".into());
    }
    if le_u64(&h[12..20]) != id {
        return Err("header names another segment".into());
    }
    Ok(SegHeader {
        first_seq: le_u64(&h[20..28]),
        salt,
        len,
    })
}

/// The first sequence of segment `id`, from its header alone.
fn first_seq_of(dir: &Path, id: u64) -> Option<u64> {
    let path = segment_path(dir, id);
    // Never open what is not a file: opening a FIFO blocks.
    if !fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    let f = File::open(path).ok()?;
    let mut h = [0u8; SEGMENT_HEADER as usize];
    let n = f.read_at(&mut h, 0).ok()?;
    parse_header(&h[..n], id).ok().map(|h| h.first_seq)
}

/// Reserve the whole segment on disk now, so appends never allocate.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::other("segment too large"))?;
    // SAFETY: a valid open file descriptor and a non-negative range.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    match rc {
        0 => Ok(()),
        // Not supported by this file system: a sparse file still works.
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(size),
        // No space (ENOSPC, EDQUOT...): a sparse segment would fail later, in the
        // middle of a batch; refuse it now.
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("data directory {0} is locked by another Tern process (remove nothing: stop that process, or use another --data-dir)")]
    Locked(PathBuf),
}

/// Lock the directory itself (flock on its own descriptor): the kernel drops the
/// lock when the process dies, and there is no lock file whose removal would let
/// a second broker in.
fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    use std::os::fd::AsRawFd;
    let io_err = |source| OpenError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let f = File::open(dir).map_err(io_err)?;
    // SAFETY: a valid open file descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(OpenError::Locked(dir.to_path_buf()));
        }
        return Err(io_err(e));
    }
    Ok(f)
}

fn stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Keep a damaged segment's bytes for inspection before it is repaired.
fn keep_aside(dir: &Path, path: &Path, id: u64) -> bool {
    let aside = dir.join("damaged");
    let target = aside.join(format!("{id:020}.seg.{}", stamp()));
    let r = fs::create_dir_all(&aside).and_then(|_| fs::copy(path, &target));
    match r {
        Ok(_) => {
            warn!("storage: damaged segment copied to {}", target.display());
            true
        }
        Err(e) => {
            warn!(
                "storage: could not copy damaged segment {} aside ({e}); it is left as it is and read the same way at the next start",
                path.display()
            );
            false
        }
    }
}

/// Move something that cannot be read as a segment out of the way (into
/// `damaged/`), so it can neither stop a start nor come back later with records
/// older than what was written since.
fn move_aside(dir: &Path, path: &Path, id: u64, why: &str) {
    let aside = dir.join("damaged");
    let target = aside.join(format!("{id:020}.seg.{}", stamp()));
    match fs::create_dir_all(&aside).and_then(|_| fs::rename(path, &target)) {
        Ok(()) => warn!(
            "storage: {} {why}: skipped, its records are lost; moved to {}",
            path.display(),
            target.display()
        ),
        Err(e) => warn!(
            "storage: {} {why}: skipped, its records are lost (could not move it aside: {e})",
            path.display()
        ),
    }
}

/// Overwrite the damaged regions of a segment so the next start reads past them
/// without reporting them again: padding where the sequence goes on, zeros at
/// the end of the newest segment.
fn repair(path: &Path, salt: Option<u64>, damage: &[Damage]) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    for d in damage {
        // Exactly the damaged bytes, never more: the next record is intact. A
        // region too small for a padding record stays as it is (and is
        // reported again at the next start).
        let size = d.to - d.from;
        let bytes = match d.resumed {
            Some(next) => match record::pad(d.first_lost, next, size, salt) {
                Some(p) => p,
                None => continue,
            },
            None => vec![0; d.to - d.from],
        };
        f.write_all_at(&bytes, d.from as u64)?;
    }
    f.sync_all()
}

/// Say exactly what a damaged region cost.
fn report(path: &Path, d: &Damage) {
    let what = match (d.resumed, d.lost()) {
        (_, Some(0)) => "no record lost".to_string(),
        (Some(r), Some(n)) => format!(
            "{n} records lost (sequence {}..={}), reading resumed at sequence {r}",
            d.first_lost,
            r - 1
        ),
        _ => format!(
            "every record from sequence {} to the end of this newest segment lost",
            d.first_lost
        ),
    };
    warn!(
        "storage: segment {} damaged at bytes {}..{} ({}): {what}",
        path.display(),
        d.from,
        d.to,
        d.why
    );
}

/// The ids of the files in `dir` named like segments (20 digits, `.seg`),
/// oldest first. What they are is looked at when they are read.
fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids: Vec<u64> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".seg") {
            if stem.len() == 20 {
                if let Ok(id) = stem.parse::<u64>() {
                    ids.push(id);
                }
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The bytes of segment file `path`, or None when it is not a readable regular
/// file (then it has been moved aside).
fn read_segment_file(dir: &Path, path: &Path, id: u64) -> Option<Vec<u8>> {
    // A directory, FIFO or device named like a segment: reading it would
    // fail (or block); it is not ours.
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            move_aside(dir, path, id, "is not a regular file");
            return None;
        }
        Err(e) => {
            move_aside(dir, path, id, &format!("cannot be examined ({e})"));
            return None;
        }
    }
    match fs::read(path) {
        Ok(d) => Some(d),
        Err(e) => {
            move_aside(dir, path, id, &format!("cannot be read ({e})"));
            None
        }
    }
}

/// A segment that may be appended to again: id, salt, end of its records.
type Reopenable = (u64, Option<u64>, usize);

/// What reading every segment at start found (the records went to the sink).
struct ReadBack {
    /// How many records were read.
    records: usize,
    /// Every segment kept, by id, with its on-disk size.
    sealed: std::collections::BTreeMap<u64, u64>,
    /// The sequence after the last record read.
    next_seq: u64,
    /// The newest segment, if it was read without damage.
    reopenable: Option<Reopenable>,
}

impl ReadBack {
    /// Read segments `ids` (oldest first) of `dir` in order, past damage,
    /// handing each record to `sink` (one segment's records at a time, so a
    /// large backlog is never all in memory at once).
    fn all(dir: &Path, ids: &[u64], clock: Clock, sink: &mut dyn FnMut(Replayed)) -> ReadBack {
        let mut read = ReadBack {
            records: 0,
            sealed: std::collections::BTreeMap::new(),
            next_seq: 1,
            reopenable: None,
        };
        for (i, &id) in ids.iter().enumerate() {
            read.reopenable = None;
            let path = segment_path(dir, id);
            let Some(data) = read_segment_file(dir, &path, id) else {
                continue;
            };
            read.segment(dir, id, ids.get(i + 1).copied(), &data, clock, sink);
        }
        read
    }

    /// Read one segment (`next` is the id of the one after it, if any): its
    /// records, or its damage reported, kept aside and padded over.
    fn segment(
        &mut self,
        dir: &Path,
        id: u64,
        next: Option<u64>,
        data: &[u8],
        clock: Clock,
        sink: &mut dyn FnMut(Replayed),
    ) {
        let path = &segment_path(dir, id);
        let h = match parse_header(data, id) {
            Ok(h) => h,
            Err(why) => {
                warn!(
                    "storage: segment {} damaged: {why}; all its records are lost",
                    path.display()
                );
                if keep_aside(dir, path, id) {
                    // Nothing of it can be trusted: empty it but keep the id used.
                    let _ = fs::write(path, header(id, self.next_seq, new_salt()));
                }
                self.sealed.insert(id, data.len() as u64);
                return;
            }
        };
        // Sequences only grow: a segment never starts before what was read.
        let first = h.first_seq.max(self.next_seq);
        // A sealed segment's records end where the next segment's begin.
        let next_first = next
            .and_then(|n| first_seq_of(dir, n))
            .filter(|&n| n >= first);
        let scanned = scan::scan(data, h.len, first, h.salt, next_first, clock);
        if scanned.damage.is_empty() {
            self.reopenable = Some((id, h.salt, scanned.end));
        } else {
            for d in &scanned.damage {
                report(path, d);
            }
            if keep_aside(dir, path, id) {
                if let Err(e) = repair(path, h.salt, &scanned.damage) {
                    warn!(
                        "storage: could not pad over the damage in {}: {e}",
                        path.display()
                    );
                }
            }
        }
        self.records += scanned.records.len();
        for (op, offset, len) in scanned.records {
            sink(Replayed {
                segment: id,
                // Segments are smaller than 4 GiB (`storage.segment_size`).
                offset: offset as u32,
                len: len as u32,
                op,
            });
        }
        self.next_seq = scanned.next_seq;
        self.sealed.insert(id, data.len() as u64);
    }
}

impl Log {
    /// Open (creating) `dir`, replay every segment in order and start a new head
    /// segment. Damage never stops the start: damaged regions are reported,
    /// copied aside and padded over; what cannot be read at all is moved aside;
    /// a head that cannot be created (no space) is retried by `ensure_head`.
    /// Every record is returned (for tools and tests; the broker streams
    /// them with `open_within`).
    pub fn open(
        dir: &Path,
        segment_size: u64,
        clock: Clock,
    ) -> Result<(Log, Vec<Replayed>), OpenError> {
        let mut records = Vec::new();
        let log = Self::open_within(dir, segment_size, 0, clock, &mut |r| records.push(r))?;
        Ok((log, records))
    }

    /// `open` with a disk budget (0: none): when a new head segment would cross
    /// it, or cannot be created for lack of space, the newest segment is reopened
    /// for appending if it was read without damage.
    pub fn open_within(
        dir: &Path,
        segment_size: u64,
        max_bytes: u64,
        clock: Clock,
        sink: &mut dyn FnMut(Replayed),
    ) -> Result<Log, OpenError> {
        let io_err = |source| OpenError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let lock = lock_dir(dir)?;
        let ids = segment_ids(dir).map_err(io_err)?;
        let read = ReadBack::all(dir, &ids, clock, sink);
        info!(
            "storage: {} records replayed from {} segments in {}",
            read.records,
            ids.len(),
            dir.display()
        );
        let mut log = Log {
            dir: dir.to_path_buf(),
            segment_size,
            head: None,
            head_id: ids.last().map_or(1, |l| l + 1),
            head_first: read.next_seq,
            sealed: read.sealed,
            next_seq: read.next_seq,
            readers: Vec::new(),
            _lock: lock,
        };
        log.start_head(read.reopenable, max_bytes);
        Ok(log)
    }

    /// Give the log a head at start: a new segment, or the newest one again
    /// (`reopenable`) when a new one would cross `max_bytes` or cannot be
    /// created. Without either the log serves what was recovered and
    /// `ensure_head` is retried later.
    fn start_head(&mut self, reopenable: Option<Reopenable>, max_bytes: u64) {
        let sealed_bytes: u64 = self.sealed.values().sum();
        if max_bytes > 0 && sealed_bytes + self.segment_size > max_bytes {
            if let Some(r) = reopenable {
                match self.reopen(r) {
                    Ok(()) => return,
                    Err(e) => warn!("storage: cannot reopen segment {}: {e}", r.0),
                }
            }
        }
        if let Err(e) = self.ensure_head() {
            if let Some(r) = reopenable {
                match self.reopen(r) {
                    Ok(()) => {
                        warn!(
                            "storage: cannot start a new segment in {}: {e}; appending to segment {} while it has room",
                            self.dir.display(),
                            r.0
                        );
                        return;
                    }
                    Err(e) => warn!("storage: cannot reopen segment {}: {e}", r.0),
                }
            }
            error!(
                "storage: cannot start a new segment in {}: {e}; serving what was recovered, durable writes refused until it can",
                self.dir.display()
            );
        }
    }

    /// Make the newest segment the head again, appending after its records (the
    /// rest of it is zeros: it was read without damage).
    fn reopen(&mut self, (id, salt, end): Reopenable) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment_path(&self.dir, id))?;
        self.sealed.remove(&id);
        self.head = Some(Head {
            id,
            file,
            len: end as u64,
            dirty: false,
            salt,
        });
        self.head_id = id;
        Ok(())
    }

    /// Create the head segment if there is none (at start, or after a rotation
    /// that found no space).
    pub fn ensure_head(&mut self) -> io::Result<()> {
        if self.head.is_some() {
            return Ok(());
        }
        let head =
            Self::create_segment(&self.dir, self.head_id, self.head_first, self.segment_size)?;
        self.head = Some(head);
        Ok(())
    }

    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    fn create_segment(dir: &Path, id: u64, first_seq: u64, size: u64) -> io::Result<Head> {
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let salt = new_salt();
        let made = preallocate(&file, size)
            .and_then(|_| file.write_all_at(&header(id, first_seq, salt), 0))
            .and_then(|_| file.sync_all())
            // The new name must survive a power cut too.
            .and_then(|_| sync_dir(dir));
        if let Err(e) = made {
            // Leave no half-made segment: the next attempt creates it anew.
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(Head {
            id,
            file,
            len: SEGMENT_HEADER,
            dirty: false,
            salt: Some(salt),
        })
    }

    pub fn head_id(&self) -> u64 {
        self.head_id
    }

    /// The salt of the head segment's records (None while there is no head).
    pub fn salt(&self) -> Option<u64> {
        self.head.as_ref().and_then(|h| h.salt)
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Take a sequence number for the next record.
    pub fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Room left in the head segment.
    pub fn head_room(&self) -> u64 {
        self.head
            .as_ref()
            .map_or(0, |h| self.segment_size.saturating_sub(h.len))
    }

    /// Where the next record appended to the head goes.
    pub fn head_len(&self) -> u64 {
        self.head.as_ref().map_or(SEGMENT_HEADER, |h| h.len)
    }

    /// Is the head segment empty (only its header)?
    pub fn head_empty(&self) -> bool {
        self.head.as_ref().is_none_or(|h| h.len == SEGMENT_HEADER)
    }

    /// Append encoded records to the head segment.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let head = self
            .head
            .as_mut()
            .ok_or_else(|| io::Error::other("no head segment"))?;
        head.file.write_all_at(bytes, head.len)?;
        head.len += bytes.len() as u64;
        head.dirty = true;
        Ok(())
    }

    /// The record of `len` bytes at `offset` in segment `seg`, its frame
    /// checked (length and CRC under the segment's salt): `(kind, body)`.
    pub fn read_record(&mut self, seg: u64, offset: u32, len: u32) -> io::Result<(u8, Vec<u8>)> {
        let mut data = vec![0u8; len as usize];
        let salt = match self.head.as_ref().filter(|h| h.id == seg) {
            Some(h) => {
                h.file.read_exact_at(&mut data, u64::from(offset))?;
                h.salt
            }
            None => {
                let i = self.reader(seg)?;
                let (_, file, salt) = &self.readers[i];
                file.read_exact_at(&mut data, u64::from(offset))?;
                *salt
            }
        };
        let f = record::frame(&data, salt)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if f.len != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "record length differs from the index",
            ));
        }
        Ok((f.kind, f.body.to_vec()))
    }

    /// The reader of sealed segment `seg`, opened (and its header read) if
    /// need be; the least recently used one is closed past `READERS`.
    fn reader(&mut self, seg: u64) -> io::Result<usize> {
        if let Some(i) = self.readers.iter().position(|(id, _, _)| *id == seg) {
            let r = self.readers.remove(i);
            self.readers.push(r);
            return Ok(self.readers.len() - 1);
        }
        if !self.sealed.contains_key(&seg) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such segment"));
        }
        let file = File::open(segment_path(&self.dir, seg))?;
        let mut h = [0u8; SEGMENT_HEADER as usize];
        let n = file.read_at(&mut h, 0)?;
        let header = parse_header(&h[..n], seg)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if self.readers.len() >= READERS {
            self.readers.remove(0);
        }
        self.readers.push((seg, file, header.salt));
        Ok(self.readers.len() - 1)
    }

    /// Seal the head (synced) and start a new one whose first record is
    /// `first_seq`. If the new one cannot be created, the log is left without a
    /// head (the old one stays sealed) until `ensure_head` succeeds.
    pub fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
        if let Some(head) = self.head.as_mut() {
            if head.dirty {
                head.file.sync_data()?;
                head.dirty = false;
            }
        }
        if let Some(old) = self.head.take() {
            self.sealed.insert(old.id, old.len.max(self.segment_size));
            self.head_id = old.id + 1;
        }
        self.head_first = first_seq;
        self.ensure_head()
    }

    /// fsync what was appended (fdatasync: the size does not change).
    pub fn sync(&mut self) -> io::Result<()> {
        if let Some(head) = self.head.as_mut() {
            if head.dirty {
                head.file.sync_data()?;
                head.dirty = false;
            }
        }
        Ok(())
    }

    pub fn oldest_sealed(&self) -> Option<u64> {
        self.sealed.keys().next().copied()
    }

    pub fn sealed_count(&self) -> usize {
        self.sealed.len()
    }

    /// Bytes the log takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.sealed.values().sum::<u64>()
            + self
                .head
                .as_ref()
                .map_or(0, |h| self.segment_size.max(h.len))
    }

    /// What the next segment would take on disk.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Delete a sealed segment (nothing in it is live any more).
    pub fn delete(&mut self, id: u64) -> io::Result<()> {
        self.readers.retain(|(r, _, _)| *r != id);
        if self.sealed.remove(&id).is_some() {
            fs::remove_file(segment_path(&self.dir, id))?;
            // A deletion lost in a power cut would bring back records whose
            // tombstones may be gone with later segments: make it durable.
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Message;
    use std::sync::Arc;

    fn retain(i: usize) -> Op {
        Op::Retain {
            message: Arc::new(Message {
                topic: Arc::from(format!("t/{i}")),
                payload: format!("payload {i}").into_bytes().into(),
                qos: crate::protocol::QoS::AtMostOnce,
                retain: true,
                properties: Default::default(),
                received: Clock::read().now,
            }),
        }
    }

    /// A format 1 segment as Tern 0.1 wrote it: 32-byte header, unsalted CRCs.
    fn v1_segment(id: u64, first: u64, n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&first.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let mut offs = Vec::new();
        for i in 0..n {
            offs.push(b.len());
            record::encode(&retain(i), first + i as u64, Clock::read(), &mut b);
        }
        b.resize(65536, 0);
        (b, offs)
    }

    fn topics(r: &[Replayed]) -> Vec<String> {
        r.iter()
            .map(|r| match &r.op {
                Op::Retain { message } => message.topic.to_string(),
                op => panic!("unexpected {op:?}"),
            })
            .collect()
    }

    #[test]
    fn format_1_segments_are_read_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, offs) = v1_segment(1, 1, 40);
        std::fs::write(segment_path(dir.path(), 1), &b).unwrap();
        let (log, r) = Log::open(dir.path(), 65536, Clock::read()).unwrap();
        assert_eq!(r.len(), 40);
        assert_eq!(log.head_id(), 2);
        assert_eq!(log.next_seq(), 41);
        let head = std::fs::read(segment_path(dir.path(), 2)).unwrap();
        assert_eq!(parse_header(&head, 2).unwrap().first_seq, 41);
        assert!(parse_header(&head, 2).unwrap().salt.is_some());
        drop(log);
        std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();

        // One flipped byte in a format 1 segment costs one record.
        b[offs[7] + 30] ^= 0x01;
        std::fs::write(segment_path(dir.path(), 1), &b).unwrap();
        let (log, r) = Log::open(dir.path(), 65536, Clock::read()).unwrap();
        let want: Vec<String> = (0..40)
            .filter(|&i| i != 7)
            .map(|i| format!("t/{i}"))
            .collect();
        assert_eq!(topics(&r), want);
        drop(log);
        std::fs::remove_file(segment_path(dir.path(), 2)).unwrap();
        // Padded over: the next start reads the same without a new report.
        let (log, r) = Log::open(dir.path(), 65536, Clock::read()).unwrap();
        assert_eq!(topics(&r), want);
        drop(log);
        let aside = std::fs::read_dir(dir.path().join("damaged"))
            .unwrap()
            .count();
        assert_eq!(aside, 1, "the damage was copied aside once");
    }

    /// Review finding: a damaged record shorter than a padding record (a
    /// `SessionGone` is 18 bytes) was padded over with 27 bytes, destroying the
    /// start of the intact record after it at the next start.
    #[test]
    fn repairing_a_small_damaged_record_keeps_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = v1_segment(1, 1, 0);
        let mut offs = Vec::new();
        b.truncate(HEADER_V1);
        let ops = [retain(0), Op::SessionGone { sid: 1 }, retain(1), retain(2)];
        for (i, op) in ops.iter().enumerate() {
            offs.push(b.len());
            record::encode(op, 1 + i as u64, Clock::read(), &mut b);
        }
        assert!(
            offs[2] - offs[1] < record::HEADER + 10,
            "a record smaller than a pad"
        );
        b.resize(65536, 0);
        b[offs[1] + 12] ^= 0x01;
        std::fs::write(segment_path(dir.path(), 1), &b).unwrap();
        let kept = |r: &[Replayed]| -> Vec<String> {
            r.iter()
                .filter_map(|r| match &r.op {
                    Op::Retain { message } => Some(message.topic.to_string()),
                    _ => None,
                })
                .collect()
        };
        for start in 0..2 {
            let (log, r) = Log::open(dir.path(), 65536, Clock::read()).unwrap();
            assert_eq!(kept(&r), vec!["t/0", "t/1", "t/2"], "start {start}");
            let head = log.head_id();
            drop(log);
            std::fs::remove_file(segment_path(dir.path(), head)).unwrap();
        }
    }

    #[test]
    fn what_is_not_a_segment_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _) = v1_segment(3, 1, 5);
        std::fs::write(segment_path(dir.path(), 3), &b).unwrap();
        std::fs::create_dir(segment_path(dir.path(), 2)).unwrap();
        std::fs::create_dir(segment_path(dir.path(), 9)).unwrap();
        let (log, r) = Log::open(dir.path(), 65536, Clock::read()).unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(log.head_id(), 10);
        assert!(!segment_path(dir.path(), 2).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("damaged"))
                .unwrap()
                .count(),
            2
        );
    }

    #[test]
    fn a_second_open_is_refused_even_without_a_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), 65536, Clock::read()).unwrap();
        let _ = std::fs::remove_file(dir.path().join("LOCK"));
        assert!(matches!(
            Log::open(dir.path(), 65536, Clock::read()),
            Err(OpenError::Locked(_))
        ));
        drop(log);
        assert!(Log::open(dir.path(), 65536, Clock::read()).is_ok());
    }
}
