//! The durable mark: how far the active segment is known to be synced, so
//! that reopening after a power loss can tell damage the operating system
//! may legitimately leave from damage to acknowledged events.
//!
//! After a power loss, page-cache writeback is unordered: the part of a
//! segment written since its last `fdatasync` can come back as any mix of
//! the new pages, zero pages and a shorter file, while everything before
//! the sync is intact. The writer records, after each successful sync and
//! *before* acknowledging the events it covers, the segment and the length
//! it synced in the `DURABLE` file of the log directory (`pwrite` of 28
//! bytes, never synced itself: one cheap system call per sync). On
//! reopening, damage to the active segment at or past the mark is a torn
//! tail (truncated, with a warning); damage before it, or a file shorter
//! than it, is corruption: acknowledged events are at stake.
//!
//! The mark is a lower bound: a power loss can leave an older value, or
//! none (the file's page lost, caught by its checksum), which only means
//! less of the segment is known durable. A log directory without the file
//! (written before it existed) keeps the classification by shape alone
//! (see [`super::segment`]).
//!
//! ```text
//! "PBMARK01" | first_seq: u64 LE | synced_len: u64 LE | crc32 of the 24 bytes before: u32 LE
//! ```

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// File name of the mark in the log directory.
pub(crate) const MARK_FILE: &str = "DURABLE";
const TAG: [u8; 8] = *b"PBMARK01";
/// Tag, first sequence number, synced length, checksum.
const MARK_LEN: usize = 8 + 8 + 8 + 4;

/// What the mark says: the segment named by `first_seq` was synced up to
/// byte `synced_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    pub first_seq: u64,
    pub synced_len: u64,
}

/// What reading the mark found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No mark file: a log from before marks; classify damage by shape.
    Absent,
    /// A file whose content is lost (zeros, cut short, bad checksum): no
    /// part of the active segment is known durable.
    Unreadable,
    /// A valid mark.
    Mark(Mark),
}

impl Found {
    /// The synced length the mark vouches for in the segment named by
    /// `first_seq`: `None` without a mark file, 0 when it names another
    /// segment or is unreadable.
    pub fn synced_len(self, first_seq: u64) -> Option<u64> {
        match self {
            Found::Absent => None,
            Found::Unreadable => Some(0),
            Found::Mark(m) if m.first_seq == first_seq => Some(m.synced_len),
            Found::Mark(_) => Some(0),
        }
    }
}

fn encode(mark: Mark) -> [u8; MARK_LEN] {
    let mut buf = [0u8; MARK_LEN];
    buf[..8].copy_from_slice(&TAG);
    buf[8..16].copy_from_slice(&mark.first_seq.to_le_bytes());
    buf[16..24].copy_from_slice(&mark.synced_len.to_le_bytes());
    let crc = crc32fast::hash(&buf[..24]);
    buf[24..].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Reads the mark of the log in `dir`.
///
/// # Errors
/// An I/O error other than the file being absent.
pub(crate) fn read(dir: &Path) -> io::Result<Found> {
    let bytes = match std::fs::read(dir.join(MARK_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(e) => return Err(e),
    };
    if bytes.len() < MARK_LEN || bytes[..8] != TAG {
        return Ok(Found::Unreadable);
    }
    let crc = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    if crc32fast::hash(&bytes[..24]) != crc {
        return Ok(Found::Unreadable);
    }
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    Ok(Found::Mark(Mark {
        first_seq: word(8),
        synced_len: word(16),
    }))
}

/// The writer's handle on the mark file.
pub(crate) struct MarkFile {
    file: File,
    path: PathBuf,
}

impl MarkFile {
    /// Opens the mark of `dir`, creating it, and records `mark` durably
    /// (file and directory entry synced: done once, when the log opens, so
    /// that a mark file is never missing after a power loss).
    ///
    /// # Errors
    /// I/O errors creating, writing or syncing it.
    pub fn open(dir: &Path, mark: Mark) -> io::Result<MarkFile> {
        let path = dir.join(MARK_FILE);
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let mut this = MarkFile { file, path };
        this.record(mark)?;
        this.file.sync_data()?;
        if !existed {
            super::writer::sync_dir(dir)?;
        }
        Ok(this)
    }

    /// Records `mark` (one positioned write, not synced).
    ///
    /// # Errors
    /// The write's I/O error.
    pub fn record(&mut self, mark: Mark) -> io::Result<()> {
        crate::failpoint::hit("log.durable_mark")?;
        let bytes = encode(mark);
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(&bytes, 0)
        }
        #[cfg(not(unix))]
        {
            use std::io::{Seek, SeekFrom, Write};
            self.file.seek(SeekFrom::Start(0))?;
            self.file.write_all(&bytes)
        }
    }

    /// The mark file's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_a_damaged_one_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), Found::Absent);
        let mark = Mark {
            first_seq: 7,
            synced_len: 4_321,
        };
        let mut file = MarkFile::open(dir.path(), mark).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Found::Mark(mark));
        assert_eq!(Found::Mark(mark).synced_len(7), Some(4_321));
        assert_eq!(
            Found::Mark(mark).synced_len(8),
            Some(0),
            "another segment: nothing known"
        );
        let next = Mark {
            first_seq: 7,
            synced_len: 9_000,
        };
        file.record(next).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Found::Mark(next));
        let mut bytes = std::fs::read(file.path()).unwrap();
        bytes[17] ^= 1;
        std::fs::write(file.path(), &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Found::Unreadable);
        std::fs::write(file.path(), [0u8; 4096]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Found::Unreadable);
        assert_eq!(Found::Unreadable.synced_len(7), Some(0));
        assert_eq!(Found::Absent.synced_len(7), None);
    }
}
