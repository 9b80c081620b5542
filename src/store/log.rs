//! Segment files of the message log: create (preallocated, directory fsynced),
//! append, sync, delete, and read back at start with truncation at the first bad
//! record. Knows bytes and records, not what they mean (that is `state.rs`).
//!
//! A segment is `DIR/<id, 20 digits>.seg`: a 32-byte header (magic, format
//! version, segment id, first record sequence, CRC32 of the header) followed by
//! records (`record.rs`). Segments are preallocated to `segment_size` so appends do
//! not change the file size (no metadata journal write per fsync on most file
//! systems); the unused tail is zeros, which reads as the end of the log.

use super::record::{self, Bad, Clock, Op};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tracing::{info, warn};

pub const MAGIC: &[u8; 8] = b"TERNLOG\0";
/// Bumped whenever the record format changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER: u64 = 32;

/// The segment currently appended to.
struct Head {
    id: u64,
    file: File,
    /// Where the next record goes.
    len: u64,
    /// Written but not yet fsynced.
    dirty: bool,
}

pub struct Log {
    dir: PathBuf,
    segment_size: u64,
    head: Head,
    /// Sealed segments by id, with their on-disk size, oldest first.
    sealed: std::collections::BTreeMap<u64, u64>,
    next_seq: u64,
    /// Kept open for the process's lifetime: the advisory lock on `DIR/LOCK`.
    _lock: File,
}

/// One record read back at start.
pub struct Replayed {
    pub segment: u64,
    pub len: u32,
    pub op: Op,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn header(id: u64, first_seq: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&id.to_le_bytes());
    h[20..28].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The first record sequence of a segment, if its header is intact.
fn parse_header(h: &[u8], id: u64) -> Result<u64, String> {
    if h.len() < SEGMENT_HEADER as usize {
        return Err("shorter than its header".into());
    }
    if &h[..8] != MAGIC {
        return Err("not a Tern log segment (bad magic)".into());
    }
    let crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc32fast::hash(&h[..28]) != crc {
        return Err("header checksum mismatch".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}, this Tern reads {FORMAT_VERSION}"
        ));
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[12..20]);
    if u64::from_le_bytes(b) != id {
        return Err("header names another segment".into());
    }
    b.copy_from_slice(&h[20..28]);
    Ok(u64::from_le_bytes(b))
}

/// Reserve the whole segment on disk now, so appends never allocate.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::other("segment too large"))?;
    // SAFETY: a valid open file descriptor and a non-negative range.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        // Not supported by this file system: a sparse file still works.
        file.set_len(size)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("data directory {0} is locked by another Tern process (remove nothing: stop that process, or use another --data-dir)")]
    Locked(PathBuf),
}

fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    use std::os::fd::AsRawFd;
    let io_err = |source| OpenError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(io_err)?;
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

/// Keep a damaged segment's bytes for inspection before it is truncated.
fn keep_aside(dir: &Path, path: &Path, id: u64) {
    let aside = dir.join("damaged");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let target = aside.join(format!("{id:020}.seg.{stamp}"));
    let r = fs::create_dir_all(&aside).and_then(|_| fs::copy(path, &target));
    match r {
        Ok(_) => warn!("damaged segment copied to {}", target.display()),
        Err(e) => warn!("could not copy damaged segment {}: {e}", path.display()),
    }
}

impl Log {
    /// Open (creating) `dir`, replay every segment in order and start a new head
    /// segment. Damage never stops the start: a segment is read up to its first
    /// bad record, copied aside and truncated there.
    pub fn open(
        dir: &Path,
        segment_size: u64,
        clock: Clock,
    ) -> Result<(Log, Vec<Replayed>), OpenError> {
        let io_err = |source| OpenError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let lock = lock_dir(dir)?;
        let mut ids: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
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
        let mut replayed = Vec::new();
        let mut sealed = std::collections::BTreeMap::new();
        let mut next_seq = 1u64;
        for &id in &ids {
            let path = segment_path(dir, id);
            let data = fs::read(&path).map_err(io_err)?;
            let first = match parse_header(&data, id) {
                Ok(s) => s,
                Err(why) => {
                    warn!(
                        "segment {} damaged: {why}; its records are dropped",
                        path.display()
                    );
                    keep_aside(dir, &path, id);
                    // Nothing of it can be trusted: empty it but keep the id used.
                    let _ = fs::write(&path, header(id, next_seq));
                    sealed.insert(id, SEGMENT_HEADER);
                    continue;
                }
            };
            // Sequences only grow: a segment never starts before what was read.
            let mut want = first.max(next_seq);
            let mut off = SEGMENT_HEADER as usize;
            let mut count = 0u64;
            loop {
                let rest = data.get(off..).unwrap_or(&[]);
                match record::decode(rest, Some(want), clock) {
                    Ok((op, _, len)) => {
                        replayed.push(Replayed {
                            segment: id,
                            len: len as u32,
                            op,
                        });
                        off += len;
                        want += 1;
                        count += 1;
                    }
                    Err(Bad::End) => break,
                    Err(why) => {
                        let dropped = data.len() - off;
                        warn!(
                            "segment {} damaged at offset {off}: {why}; kept {count} records, dropped the last {dropped} bytes (truncated)",
                            path.display()
                        );
                        keep_aside(dir, &path, id);
                        let f = OpenOptions::new().write(true).open(&path).map_err(io_err)?;
                        f.set_len(off as u64).map_err(io_err)?;
                        f.sync_all().map_err(io_err)?;
                        break;
                    }
                }
            }
            next_seq = want;
            sealed.insert(id, data.len() as u64);
        }
        let head_id = ids.last().map_or(1, |l| l + 1);
        let head = Self::create_segment(dir, head_id, next_seq, segment_size).map_err(io_err)?;
        info!(
            "storage: {} records replayed from {} segments in {}",
            replayed.len(),
            ids.len(),
            dir.display()
        );
        Ok((
            Log {
                dir: dir.to_path_buf(),
                segment_size,
                head,
                sealed,
                next_seq,
                _lock: lock,
            },
            replayed,
        ))
    }

    fn create_segment(dir: &Path, id: u64, first_seq: u64, size: u64) -> io::Result<Head> {
        let path = segment_path(dir, id);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        preallocate(&file, size)?;
        file.write_all_at(&header(id, first_seq), 0)?;
        file.sync_all()?;
        // The new name must survive a power cut too.
        sync_dir(dir)?;
        Ok(Head {
            id,
            file,
            len: SEGMENT_HEADER,
            dirty: false,
        })
    }

    pub fn head_id(&self) -> u64 {
        self.head.id
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
        self.segment_size.saturating_sub(self.head.len)
    }

    /// Is the head segment empty (only its header)?
    pub fn head_empty(&self) -> bool {
        self.head.len == SEGMENT_HEADER
    }

    /// Append encoded records to the head segment.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.head.file.write_all_at(bytes, self.head.len)?;
        self.head.len += bytes.len() as u64;
        self.head.dirty = true;
        Ok(())
    }

    /// Seal the head (synced) and start a new one whose first record is `first_seq`.
    pub fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
        if self.head.dirty {
            self.head.file.sync_data()?;
            self.head.dirty = false;
        }
        let id = self.head.id + 1;
        let new = Self::create_segment(&self.dir, id, first_seq, self.segment_size)?;
        let old = std::mem::replace(&mut self.head, new);
        self.sealed.insert(old.id, old.len.max(self.segment_size));
        Ok(())
    }

    /// fsync what was appended (fdatasync: the size does not change).
    pub fn sync(&mut self) -> io::Result<()> {
        if self.head.dirty {
            self.head.file.sync_data()?;
            self.head.dirty = false;
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
        self.sealed.values().sum::<u64>() + self.segment_size.max(self.head.len)
    }

    /// Delete a sealed segment (nothing in it is live any more).
    pub fn delete(&mut self, id: u64) -> io::Result<()> {
        if self.sealed.remove(&id).is_some() {
            fs::remove_file(segment_path(&self.dir, id))?;
            // A deletion lost in a power cut would bring back records whose
            // tombstones may be gone with later segments: make it durable.
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}
