//! The request journal: the outcome of every request a plugin sent, keyed by
//! (plugin, event id, request index), so that handling an event again
//! (trap recovery, restart catch-up, hot-reload handover, `plugbus replay`,
//! a NATS redelivery) answers its requests from here instead of sending
//! them twice.
//!
//! With a log the journal is the file `http-journal` in the log directory:
//! append-only records `[len u32 LE][crc32 u32 LE][JSON]`, each written (and,
//! unless the log's durability is `off`, `fdatasync`ed) before the guest
//! sees the response, so before the event can count as handled. An index
//! of keys to file offsets lives in memory; bodies are read back only when
//! an answer is replayed. A torn last record (a crash mid-write) is cut off
//! at open; a damaged record before the end is an error naming the file and
//! offset, never silently skipped (skipping would resend its request).
//!
//! Without a log the journal lives in memory and keeps the last
//! [`MEMORY_ENTRIES`] outcomes: enough for trap recovery, which replays at
//! most `replay_max_events` events; nothing survives the process.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The journal's file name in the log directory.
pub const JOURNAL_FILE: &str = "http-journal";
/// Outcomes a journal without a log keeps: trap recovery replays at most a
/// plugin's `replay_max_events` (10,000 by default) events, few of which make
/// requests; 16,384 entries of at most a response body each bound memory.
pub const MEMORY_ENTRIES: usize = 16_384;
/// Largest record the journal reads back: a response body at the largest
/// grant (64 MiB) plus headers, as base64 JSON.
const MAX_RECORD: u32 = 96 << 20;

/// What identifies one request: the plugin, the event it handled, and the
/// request's place among that event's requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestKey {
    /// Plugin name.
    pub plugin: String,
    /// The id of the event being handled.
    pub event: String,
    /// 0 for the event's first request, 1 for the next…
    pub index: u32,
}

impl RequestKey {
    /// The `Idempotency-Key` header value of this request: a hash of the key,
    /// the same on every host and every redelivery.
    ///
    /// ```
    /// use plugbus::http::RequestKey;
    /// let k = RequestKey { plugin: "webhook-alert".into(), event: "e1".into(), index: 0 };
    /// assert_eq!(k.idempotency_key(), k.clone().idempotency_key());
    /// assert_eq!(k.idempotency_key().len(), 32);
    /// ```
    pub fn idempotency_key(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [self.plugin.as_bytes(), self.event.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(self.index.to_le_bytes());
        h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a request came to, as the guest saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recorded {
    /// A response: status, headers and the whole body.
    Response {
        /// HTTP status.
        status: u16,
        /// Header fields in order.
        headers: Vec<(String, String)>,
        /// The body (base64 in the file).
        #[serde(with = "b64")]
        body: Vec<u8>,
    },
    /// A failure after the request may have left (timeout, reset, a body
    /// over the limit): the `wasi:http` error code the guest got.
    Failed(String),
}

mod b64 {
    use base64::Engine as _;
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    key: RequestKey,
    outcome: Recorded,
}

/// A journal that cannot be opened or written. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the file failed.
    #[error("request journal {}: {source}", path.display())]
    Io {
        /// The journal file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A record before the end of the file is damaged.
    #[error("request journal {}: record at byte {offset} is damaged ({reason}); move the file aside to start a new journal (its requests may then be sent again)", path.display())]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The journal: shared by every plugin of a bus (cheap handles).
#[derive(Clone)]
pub struct RequestJournal {
    inner: Arc<Mutex<Store>>,
}

/// Where each record's JSON is in the file: offset and length.
type Index = HashMap<RequestKey, (u64, u32)>;

enum Store {
    File {
        path: PathBuf,
        file: File,
        end: u64,
        index: Index,
        sync: bool,
        /// Opened for a replay: never written.
        read_only: bool,
    },
    Memory {
        entries: HashMap<RequestKey, Arc<Recorded>>,
        order: VecDeque<RequestKey>,
    },
}

impl RequestJournal {
    /// A journal in memory (a bus without a log).
    pub fn memory() -> RequestJournal {
        RequestJournal {
            inner: Arc::new(Mutex::new(Store::Memory {
                entries: HashMap::new(),
                order: VecDeque::new(),
            })),
        }
    }

    /// Opens (or creates) the journal in log directory `dir`; `sync`:
    /// `fdatasync` each record. A torn last record is cut off.
    ///
    /// # Errors
    /// [`JournalError`] naming the file.
    pub fn open(dir: &Path, sync: bool) -> Result<RequestJournal, JournalError> {
        RequestJournal::open_with(dir, sync, false)
    }

    /// Opens the journal of log directory `dir` to answer a replay's
    /// requests, never writing it; a missing file is an empty journal.
    ///
    /// # Errors
    /// [`JournalError`] naming the file.
    pub fn open_read_only(dir: &Path) -> Result<RequestJournal, JournalError> {
        RequestJournal::open_with(dir, false, true)
    }

    fn open_with(dir: &Path, sync: bool, read_only: bool) -> Result<RequestJournal, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        let mut file = if read_only {
            match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RequestJournal::memory()),
                Err(e) => return Err(io(e)),
            }
        } else {
            File::options()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(io)?
        };
        let size = file.metadata().map_err(io)?.len();
        let (index, end) = scan(&path, &file, size)?;
        if end < size && !read_only {
            tracing::warn!(path = %path.display(), kept = end, cut = size - end, "request journal: torn last record cut off");
            file.set_len(end).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
        }
        Ok(RequestJournal {
            inner: Arc::new(Mutex::new(Store::File {
                path,
                file,
                end,
                index,
                sync,
                read_only,
            })),
        })
    }

    /// The recorded outcome of `key`, if there is one.
    ///
    /// # Errors
    /// [`JournalError`] when the record cannot be read back.
    pub fn get(&self, key: &RequestKey) -> Result<Option<Arc<Recorded>>, JournalError> {
        // Poisoning needs a panic while the lock is held; no code below panics.
        let store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &*store {
            Store::Memory { entries, .. } => Ok(entries.get(key).cloned()),
            Store::File { path, file, index, .. } => {
                let Some(&(offset, len)) = index.get(key) else {
                    return Ok(None);
                };
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, offset)
                    .map_err(|source| JournalError::Io {
                        path: path.clone(),
                        source,
                    })?;
                let record: Record = serde_json::from_slice(&buf).map_err(|e| JournalError::Corrupt {
                    path: path.clone(),
                    offset,
                    reason: e.to_string(),
                })?;
                Ok(Some(Arc::new(record.outcome)))
            }
        }
    }

    /// Records `key`'s outcome (blocking: call from a blocking thread).
    /// A read-only journal (a replay's) keeps it in memory only.
    ///
    /// # Errors
    /// [`JournalError`] when the record cannot be written.
    pub fn put(&self, key: RequestKey, outcome: Recorded) -> Result<(), JournalError> {
        let mut store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *store {
            Store::Memory { entries, order } => {
                if entries.insert(key.clone(), Arc::new(outcome)).is_none() {
                    order.push_back(key);
                    if order.len() > MEMORY_ENTRIES
                        && let Some(old) = order.pop_front()
                    {
                        entries.remove(&old);
                    }
                }
                Ok(())
            }
            Store::File { read_only: true, .. } => Ok(()),
            Store::File {
                path,
                file,
                end,
                index,
                sync,
                ..
            } => {
                let json = serde_json::to_vec(&Record {
                    key: key.clone(),
                    outcome,
                })
                .map_err(|e| JournalError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?;
                let mut rec = Vec::with_capacity(json.len() + 8);
                rec.extend_from_slice(&(json.len() as u32).to_le_bytes());
                rec.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
                rec.extend_from_slice(&json);
                let io = |source| JournalError::Io {
                    path: path.clone(),
                    source,
                };
                file.write_all(&rec).map_err(io)?;
                if *sync {
                    file.sync_data().map_err(io)?;
                }
                index.insert(key, (*end + 8, json.len() as u32));
                *end += rec.len() as u64;
                Ok(())
            }
        }
    }

    /// Whether records stay in memory (no file I/O: `put` never blocks).
    pub fn in_memory(&self) -> bool {
        let store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        matches!(&*store, Store::Memory { .. } | Store::File { read_only: true, .. })
    }

    /// Requests recorded.
    pub fn len(&self) -> usize {
        let store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &*store {
            Store::Memory { entries, .. } => entries.len(),
            Store::File { index, .. } => index.len(),
        }
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Indexes the records of `bytes`; returns the index and where the last
/// whole record ends.
/// A record's key alone: the index needs nothing else, and the outcome's
/// body (base64) is then skipped, not decoded.
#[derive(Deserialize)]
struct KeyOnly {
    key: RequestKey,
}

/// The index of the `size` bytes of `file` and where its last whole record
/// ends. Reads one record at a time (memory bounded by the largest record,
/// not the file). A record cut short, or one whose checksum fails, at the
/// very end is a torn write: the scan stops before it. A bad record before
/// the end is an error.
fn scan(path: &Path, file: &File, size: u64) -> Result<(Index, u64), JournalError> {
    let mut index = HashMap::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    reader.seek(SeekFrom::Start(0)).map_err(|source| JournalError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut at = 0u64;
    let mut json = Vec::new();
    while at < size {
        let corrupt = |reason: String| JournalError::Corrupt {
            path: path.to_owned(),
            offset: at,
            reason,
        };
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        if size - at < 8 {
            break;
        }
        let mut head = [0u8; 8];
        reader.read_exact(&mut head).map_err(io)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_RECORD {
            return Err(corrupt(format!("length {len} is past the largest record")));
        }
        let end = at + 8 + u64::from(len);
        if end > size {
            break;
        }
        json.resize(len as usize, 0);
        reader.read_exact(&mut json).map_err(io)?;
        if crc32fast::hash(&json) != crc {
            if end == size {
                break;
            }
            return Err(corrupt("checksum mismatch".into()));
        }
        let record: KeyOnly = serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
        index.insert(record.key, (at + 8, len));
        at = end;
    }
    Ok((index, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> RequestKey {
        RequestKey {
            plugin: "p".into(),
            event: format!("e{i}"),
            index: 0,
        }
    }

    fn ok(body: &str) -> Recorded {
        Recorded::Response {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn records_survive_reopening_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let j = RequestJournal::open(dir.path(), true).unwrap();
        j.put(key(1), ok("one")).unwrap();
        j.put(key(2), Recorded::Failed("connection-refused".into())).unwrap();
        drop(j);
        let path = dir.path().join(JOURNAL_FILE);
        let good = std::fs::metadata(&path).unwrap().len();
        // A crash mid-write: half a record at the end.
        let mut f = File::options().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
        drop(f);
        let j = RequestJournal::open(dir.path(), true).unwrap();
        assert_eq!(j.get(&key(1)).unwrap().as_deref(), Some(&ok("one")));
        assert_eq!(
            j.get(&key(2)).unwrap().as_deref(),
            Some(&Recorded::Failed("connection-refused".into()))
        );
        assert_eq!(j.get(&key(3)).unwrap(), None);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        j.put(key(3), ok("three")).unwrap();
        drop(j);
        let j = RequestJournal::open_read_only(dir.path()).unwrap();
        assert_eq!(j.len(), 3);
        assert_eq!(j.get(&key(3)).unwrap().as_deref(), Some(&ok("three")));
    }

    #[test]
    fn a_last_record_with_a_bad_checksum_or_a_short_head_is_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let j = RequestJournal::open(dir.path(), false).unwrap();
        j.put(key(1), ok("one")).unwrap();
        drop(j);
        let path = dir.path().join(JOURNAL_FILE);
        let good = std::fs::read(&path).unwrap();
        // The whole last record is there but its bytes are not those
        // checksummed (the page with its end never reached the disk); then
        // only part of a record's head.
        let whole = [&good[..], &good[..good.len() - 1], b"x"].concat();
        for tail in [whole, [&good[..], &[3u8, 0, 0][..]].concat()] {
            std::fs::write(&path, &tail).unwrap();
            let j = RequestJournal::open(dir.path(), false).unwrap();
            assert_eq!(j.len(), 1);
            assert_eq!(std::fs::read(&path).unwrap(), good, "cut back to the whole records");
        }
    }

    #[test]
    fn a_damaged_record_before_the_end_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let j = RequestJournal::open(dir.path(), false).unwrap();
        j.put(key(1), ok("one")).unwrap();
        j.put(key(2), ok("two")).unwrap();
        drop(j);
        let path = dir.path().join(JOURNAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let Err(e) = RequestJournal::open(dir.path(), false) else {
            panic!("a damaged journal opened")
        };
        let text = e.to_string();
        assert!(text.contains("http-journal") && text.contains("byte 0"), "{text}");
    }

    #[test]
    fn the_memory_journal_keeps_the_last_entries() {
        let j = RequestJournal::memory();
        for i in 0..(MEMORY_ENTRIES as u32 + 10) {
            j.put(key(i), ok("x")).unwrap();
        }
        assert_eq!(j.len(), MEMORY_ENTRIES);
        assert!(j.get(&key(0)).unwrap().is_none());
        assert!(j.get(&key(MEMORY_ENTRIES as u32 + 9)).unwrap().is_some());
    }
}
