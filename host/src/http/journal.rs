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
//! Each record also carries the event's sequence number in the log, so the
//! journal can be compacted when the log's retention removes history
//! ([`RequestJournal::compact`]): a request of an event below the log's
//! first retained number and below every kept plugin snapshot can never be
//! handled again by a catch-up, a trap recovery or a replay, so its record is
//! dropped, unless the caller keeps it (a dead-lettered event, which a
//! redrive hands to its plugin again). Compaction copies the records kept to
//! `http-journal.compacting`, syncs it and renames it over the journal: a
//! crash before the rename leaves the old journal whole (the partial copy is
//! removed at the next open), a crash after it the new one.
//!
//! Without a log the journal lives in memory and keeps the last
//! [`MEMORY_ENTRIES`] outcomes: enough for trap recovery, which replays at
//! most `replay_max_events` events; nothing survives the process. When it
//! is full, the plugin holding the most entries loses its oldest: a busy
//! plugin never evicts a quiet one's records before its trap recovery.
//!
//! On NATS (with the `nats` feature) the records go to a JetStream key-value
//! bucket shared by every host of the stream (`kv_bucket::parted`): a record is
//! stored by the server before the guest sees the response, so an event
//! redelivered to another host, or replayed from the stream, finds it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The journal's file name in the log directory.
pub const JOURNAL_FILE: &str = "http-journal";
/// The copy a compaction writes before renaming it over [`JOURNAL_FILE`].
const COMPACTING_FILE: &str = "http-journal.compacting";
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
        crate::text::hex(&h.finalize()[..16])
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
    /// The event's sequence number in the log (absent: unknown, never
    /// compacted away).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// The request's [`fingerprint`] (absent in records written before it
    /// was kept: such a record answers whatever request has its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request: Option<String>,
    outcome: Recorded,
}

/// What identifies a request beyond its key: a hash of its method and URL.
/// A journaled answer is given back only to the request it answered: a
/// plugin version that asks in another order, or two events sharing an id,
/// never get another request's response.
///
/// ```
/// use plugbus::http::fingerprint;
/// assert_eq!(fingerprint("POST", "https://h.example/a"), fingerprint("POST", "https://h.example/a"));
/// assert_ne!(fingerprint("POST", "https://h.example/a"), fingerprint("GET", "https://h.example/a"));
/// ```
pub fn fingerprint(method: &str, url: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(url.as_bytes());
    crate::text::hex(&h.finalize()[..8])
}

/// A journaled answer and the fingerprint of the request it answered
/// (`None`: a record from before fingerprints were kept).
pub type Journaled = (Arc<Recorded>, Option<String>);

/// A journal that cannot be opened or written. Names the file (or bucket).
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
    /// The NATS key-value bucket could not be read or written.
    #[error("request journal in NATS bucket `{bucket}`: {reason}")]
    Nats {
        /// The bucket.
        bucket: String,
        /// The server's answer or what is wrong with a value.
        reason: String,
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

#[cfg(feature = "nats")]
impl JournalError {
    fn nats(bucket: &str, reason: impl ToString) -> JournalError {
        JournalError::Nats {
            bucket: bucket.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// What a compaction did ([`RequestJournal::compact`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compaction {
    /// Records kept.
    pub kept: usize,
    /// Records dropped.
    pub removed: usize,
    /// The file's size before and after.
    pub bytes_before: u64,
    /// See `bytes_before`.
    pub bytes_after: u64,
}

/// The journal: shared by every plugin of a bus (cheap handles).
#[derive(Clone)]
pub struct RequestJournal {
    inner: Arc<Mutex<Store>>,
    /// The store is memory, or a file opened read-only: it never writes
    /// (fixed at open, so asking takes no lock).
    writes_nothing: bool,
    /// Held through a compaction: one at a time.
    compacting: Arc<Mutex<()>>,
    /// On NATS: the shared bucket, used instead of `inner` by
    /// [`lookup`](Self::lookup) and [`record`](Self::record).
    #[cfg(feature = "nats")]
    remote: Option<Arc<Remote>>,
}

/// A journal bucket, and whether this bus may write it (a replay's may not).
#[cfg(feature = "nats")]
struct Remote {
    kv: crate::kv_bucket::parted::PartedBucket,
    read_only: bool,
}

/// Where one record's JSON is in the file, and its event's sequence number.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: u64,
    len: u32,
    seq: Option<u64>,
}

type Index = HashMap<RequestKey, Entry>;

enum Store {
    File {
        path: PathBuf,
        /// Shared so that a record's sync runs outside the lock (see
        /// `put_with`); replaced whole by a compaction.
        file: Arc<File>,
        end: u64,
        index: Index,
        sync: bool,
        /// Opened for a replay: never written.
        read_only: bool,
    },
    Memory {
        entries: HashMap<RequestKey, Journaled>,
        /// Each plugin's keys, oldest first.
        order: HashMap<String, VecDeque<RequestKey>>,
    },
}

impl RequestJournal {
    /// A journal in memory (a bus without a log).
    pub fn memory() -> RequestJournal {
        RequestJournal::of(Store::Memory {
            entries: HashMap::new(),
            order: HashMap::new(),
        })
    }

    fn of(store: Store) -> RequestJournal {
        RequestJournal {
            writes_nothing: matches!(store, Store::Memory { .. } | Store::File { read_only: true, .. }),
            inner: Arc::new(Mutex::new(store)),
            compacting: Arc::new(Mutex::new(())),
            #[cfg(feature = "nats")]
            remote: None,
        }
    }

    /// The journal of a NATS stream: bucket `bucket` (created if needed,
    /// values kept `max_age`, the stream's own age limit), shared by every
    /// host of the stream.
    ///
    /// # Errors
    /// [`JournalError::Nats`] naming the bucket.
    #[cfg(feature = "nats")]
    pub(crate) async fn nats(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        max_age: std::time::Duration,
    ) -> Result<RequestJournal, JournalError> {
        let kv = crate::kv_bucket::parted::PartedBucket::open(
            js,
            bucket,
            crate::kv_bucket::BucketSpec {
                description: "plugbus: the outcome of every request a plugin sent (the request journal)",
                history: 1,
                max_age,
                discard: async_nats::jetstream::stream::DiscardPolicy::Old,
            },
        )
        .await
        .map_err(|reason| JournalError::nats(bucket, reason))?;
        Ok(RequestJournal::with_remote(kv, false))
    }

    /// The journal of a NATS stream, to answer a replay's requests: never
    /// written, and empty when the bucket does not exist.
    ///
    /// # Errors
    /// [`JournalError::Nats`] naming the bucket.
    #[cfg(feature = "nats")]
    pub(crate) async fn nats_read_only(
        js: &async_nats::jetstream::Context,
        bucket: &str,
    ) -> Result<RequestJournal, JournalError> {
        match crate::kv_bucket::parted::PartedBucket::open_existing(js, bucket).await {
            Ok(Some(kv)) => Ok(RequestJournal::with_remote(kv, true)),
            Ok(None) => Ok(RequestJournal::memory()),
            Err(reason) => Err(JournalError::nats(bucket, reason)),
        }
    }

    #[cfg(feature = "nats")]
    fn with_remote(kv: crate::kv_bucket::parted::PartedBucket, read_only: bool) -> RequestJournal {
        let mut journal = RequestJournal::memory();
        journal.remote = Some(Arc::new(Remote { kv, read_only }));
        journal
    }

    /// The recorded outcome of `key`, if there is one, from wherever this
    /// journal keeps it (a file read, or on NATS the bucket).
    ///
    /// # Errors
    /// [`JournalError`] when the record cannot be read back.
    pub async fn lookup(&self, key: &RequestKey) -> Result<Option<Journaled>, JournalError> {
        // A slow lookup (`sleep(ms)`: a cold disk, a far bucket) or a failed one.
        crate::failpoint::hit("http_journal.lookup").map_err(|source| JournalError::Io {
            path: PathBuf::from(JOURNAL_FILE),
            source,
        })?;
        #[cfg(feature = "nats")]
        if let Some(remote) = &self.remote {
            let err = |reason: String| JournalError::nats(remote.kv.bucket(), reason);
            let Some(bytes) = remote.kv.get(&key.idempotency_key()).await.map_err(err)? else {
                return Ok(None);
            };
            let record: Record = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
            // Two keys with one hash would need a SHA-256 collision.
            if record.key != *key {
                return Err(err(format!(
                    "the record under {} is {:?}'s",
                    key.idempotency_key(),
                    record.key
                )));
            }
            return Ok(Some((Arc::new(record.outcome), record.request)));
        }
        // A file read is one record from the page cache: not worth a thread.
        // But a writer holding the lock may be syncing (a record's
        // `fdatasync`, a compaction's copy and rename): then the lookup
        // waits on a blocking thread, never on one of the runtime's, whose
        // other tasks (other plugins' events) would wait too.
        let inline = match self.inner.try_lock() {
            Ok(store) => Some(get_in(&store, key)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(get_in(&p.into_inner(), key)),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(found) = inline {
            return found;
        }
        let journal = self.clone();
        let key = key.clone();
        tokio::task::spawn_blocking(move || journal.get_journaled(&key))
            .await
            .map_err(|e| JournalError::Io {
                path: PathBuf::from(JOURNAL_FILE),
                source: std::io::Error::other(format!("journal task failed: {e}")),
            })?
    }

    /// Records `key`'s outcome where this journal keeps it, returning once
    /// it is kept: in memory, written (and synced) to the file on a
    /// blocking thread, or stored by the NATS server.
    ///
    /// # Errors
    /// [`JournalError`] when the record cannot be kept.
    pub async fn record(
        &self,
        key: RequestKey,
        seq: Option<u64>,
        request: Option<String>,
        outcome: Recorded,
    ) -> Result<(), JournalError> {
        self.record_as(key, seq, request, outcome, true).await
    }

    /// [`record`](Self::record) without a sync of its own: in a file
    /// journal the record is written (a process crash keeps it, the page
    /// cache holds it) and made durable by the next synced record or
    /// compaction, so power loss before then may lose it. For outcomes
    /// that sent nothing (a request refused by the plugin's rate or
    /// concurrency limit), which a plugin hammering its limit would
    /// otherwise pay a sync each for.
    ///
    /// # Errors
    /// As for [`record`](Self::record).
    pub async fn record_unsynced(
        &self,
        key: RequestKey,
        seq: Option<u64>,
        request: Option<String>,
        outcome: Recorded,
    ) -> Result<(), JournalError> {
        self.record_as(key, seq, request, outcome, false).await
    }

    async fn record_as(
        &self,
        key: RequestKey,
        seq: Option<u64>,
        request: Option<String>,
        outcome: Recorded,
        synced: bool,
    ) -> Result<(), JournalError> {
        #[cfg(feature = "nats")]
        if let Some(remote) = &self.remote {
            if remote.read_only {
                return Ok(());
            }
            let name = key.idempotency_key();
            let err = |reason: String| JournalError::nats(remote.kv.bucket(), reason);
            let bytes = serde_json::to_vec(&Record {
                key,
                seq,
                request,
                outcome,
            })
            .map_err(|e| err(e.to_string()))?;
            return remote.kv.put(&name, &bytes).await.map_err(err);
        }
        if self.in_memory() {
            return self.put_request(key, seq, request, outcome);
        }
        let journal = self.clone();
        tokio::task::spawn_blocking(move || journal.put_with(key, seq, request, outcome, synced))
            .await
            .map_err(|e| JournalError::Io {
                path: PathBuf::from(JOURNAL_FILE),
                source: std::io::Error::other(format!("journal task failed: {e}")),
            })?
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
        if !read_only {
            // What a compaction cut short by a crash left: the journal it
            // was copying from is whole.
            match std::fs::remove_file(dir.join(COMPACTING_FILE)) {
                Ok(()) => {
                    tracing::warn!(path = %path.display(), "request journal: an unfinished compaction's copy removed")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
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
        Ok(RequestJournal::of(Store::File {
            path,
            file: Arc::new(file),
            end,
            index,
            sync,
            read_only,
        }))
    }

    /// The recorded outcome of `key`, if there is one.
    ///
    /// # Errors
    /// [`JournalError`] when the record cannot be read back.
    pub fn get(&self, key: &RequestKey) -> Result<Option<Arc<Recorded>>, JournalError> {
        Ok(self.get_journaled(key)?.map(|(outcome, _)| outcome))
    }

    /// [`get`](Self::get), with the fingerprint of the request answered.
    ///
    /// # Errors
    /// As for [`get`](Self::get).
    pub fn get_journaled(&self, key: &RequestKey) -> Result<Option<Journaled>, JournalError> {
        // Poisoning needs a panic while the lock is held; no code below panics.
        let store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        get_in(&store, key)
    }

    /// Records `key`'s outcome (blocking: call from a blocking thread);
    /// `seq` is the event's sequence number in the log, what
    /// [`compact`](Self::compact) goes by. A read-only journal (a replay's)
    /// keeps nothing.
    ///
    /// # Errors
    /// [`JournalError`] when the record cannot be written.
    pub fn put(&self, key: RequestKey, seq: Option<u64>, outcome: Recorded) -> Result<(), JournalError> {
        self.put_request(key, seq, None, outcome)
    }

    /// [`put`](Self::put), with the [`fingerprint`] of the request answered.
    ///
    /// # Errors
    /// As for [`put`](Self::put).
    pub fn put_request(
        &self,
        key: RequestKey,
        seq: Option<u64>,
        request: Option<String>,
        outcome: Recorded,
    ) -> Result<(), JournalError> {
        self.put_with(key, seq, request, outcome, true)
    }

    /// [`put_request`](Self::put_request); `synced`: sync the record before
    /// returning (when the journal was opened to sync).
    fn put_with(
        &self,
        key: RequestKey,
        seq: Option<u64>,
        request: Option<String>,
        outcome: Recorded,
        synced: bool,
    ) -> Result<(), JournalError> {
        let mut store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *store {
            Store::Memory { entries, order } => {
                if entries.insert(key.clone(), (Arc::new(outcome), request)).is_none() {
                    order.entry(key.plugin.clone()).or_default().push_back(key);
                    if entries.len() > MEMORY_ENTRIES
                        && let Some(keys) = order.values_mut().max_by_key(|keys| keys.len())
                        && let Some(old) = keys.pop_front()
                    {
                        entries.remove(&old);
                    }
                    order.retain(|_, keys| !keys.is_empty());
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
                    seq,
                    request,
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
                if let Err(e) = (&**file).write_all(&rec) {
                    // Part of the record may be in the file: cut it off, or
                    // every later record would be indexed at the wrong
                    // offset. If even that fails, `get` still refuses a
                    // record whose key is not the one asked for.
                    let _ = file.set_len(*end);
                    return Err(io(e));
                }
                index.insert(
                    key,
                    Entry {
                        offset: *end + 8,
                        len: json.len() as u32,
                        seq,
                    },
                );
                *end += rec.len() as u64;
                // The sync runs after the lock is released: another
                // plugin's record, refusal or lookup does not wait for this
                // one's `fdatasync` (~0.2-0.5 ms here), and records synced
                // at once share the disk's flush. A compaction meanwhile
                // copies this record into the file it syncs before its
                // rename, so the record is durable either way.
                let to_sync = (*sync && synced).then(|| (Arc::clone(file), path.clone()));
                drop(store);
                if let Some((file, path)) = to_sync {
                    // The record stays indexed if its sync fails (other
                    // records may follow it now): the caller reports the
                    // request as not journaled, and a replay may still find
                    // its outcome.
                    crate::failpoint::hit("http_journal.sync")
                        .and_then(|()| file.sync_data())
                        .map_err(|source| JournalError::Io { path, source })?;
                }
                Ok(())
            }
        }
    }

    /// Drops the records of events numbered below `floor` (those whose
    /// number is unknown stay), except those `keep` asks for (given the
    /// key and the event's number; asked only after the records below the
    /// floor were found, so it may read what holds records back then), by
    /// copying the rest to a new file renamed over the journal. Requests
    /// recorded meanwhile are not held up while `keep` is asked (it may read files)
    /// or the old records are copied; those recorded since are copied last,
    /// under the lock. One compaction runs at a time; a read-only or memory
    /// journal is left as it is. Blocking: call from a blocking thread.
    ///
    /// ```
    /// # fn main() -> Result<(), plugbus::http::JournalError> {
    /// use plugbus::http::{Recorded, RequestJournal, RequestKey};
    /// let dir = tempfile::tempdir().unwrap();
    /// let journal = RequestJournal::open(dir.path(), false)?;
    /// let key = |event: &str| RequestKey { plugin: "p".into(), event: event.into(), index: 0 };
    /// journal.put(key("old"), Some(3), Recorded::Failed("timeout".into()))?;
    /// journal.put(key("new"), Some(30), Recorded::Failed("timeout".into()))?;
    /// let done = journal.compact(10, |_, _| false)?;
    /// assert_eq!((done.kept, done.removed), (1, 1));
    /// assert!(journal.get(&key("old"))?.is_none() && journal.get(&key("new"))?.is_some());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`JournalError::Io`] when the copy cannot be written or renamed; the
    /// journal is then left as it was.
    pub fn compact(&self, floor: u64, keep: impl Fn(&RequestKey, u64) -> bool) -> Result<Compaction, JournalError> {
        let _one = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        // The records below the floor, found under the lock; `keep` is then
        // asked without it (it may read files), so requests being recorded
        // are not held up by it.
        let below: Vec<(RequestKey, u64, u64)> = {
            let store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            match &*store {
                Store::File {
                    index,
                    read_only: false,
                    ..
                } => index
                    .iter()
                    .filter_map(|(key, e)| e.seq.filter(|seq| *seq < floor).map(|seq| (key.clone(), e.offset, seq)))
                    .collect(),
                _ => return Ok(Compaction::default()),
            }
        };
        // A record is identified by its place: a key recorded again since
        // (at a new offset) is not dropped with the old record.
        let dropped: HashMap<RequestKey, u64> = below
            .into_iter()
            .filter(|(key, _, seq)| !keep(key, *seq))
            .map(|(key, offset, _)| (key, offset))
            .collect();
        // What to copy, decided under the lock; copied without it.
        let (path, source, copied_to, live, before) = {
            let store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let Store::File {
                path, file, end, index, ..
            } = &*store
            else {
                return Ok(Compaction::default());
            };
            if dropped.is_empty() {
                return Ok(Compaction {
                    kept: index.len(),
                    removed: 0,
                    bytes_before: *end,
                    bytes_after: *end,
                });
            }
            let mut live: Vec<(RequestKey, Entry)> = index
                .iter()
                .filter(|(key, e)| dropped.get(*key) != Some(&e.offset))
                .map(|(key, e)| (key.clone(), *e))
                .collect();
            let source = file.try_clone().map_err(|source| JournalError::Io {
                path: path.clone(),
                source,
            })?;
            live.sort_by_key(|(_, e)| e.offset);
            let removed = index.len() - live.len();
            (path.clone(), source, *end, live, (removed, *end))
        };
        let tmp = path.with_file_name(COMPACTING_FILE);
        let io = |source| JournalError::Io {
            path: tmp.clone(),
            source,
        };
        let result = (|| {
            let out = File::options()
                .read(true)
                .append(true)
                .create(true)
                .truncate(false)
                .open(&tmp)
                .map_err(io)?;
            out.set_len(0).map_err(io)?;
            let mut writer = std::io::BufWriter::with_capacity(1 << 16, &out);
            let mut index = Index::with_capacity(live.len());
            let mut at = 0u64;
            let mut buf = Vec::new();
            for (key, e) in live {
                // The record's head (length and checksum) and its JSON.
                buf.resize(e.len as usize + 8, 0);
                source.read_exact_at(&mut buf, e.offset - 8).map_err(io)?;
                writer.write_all(&buf).map_err(io)?;
                index.insert(key, Entry { offset: at + 8, ..e });
                at += buf.len() as u64;
            }
            crate::failpoint::hit("http_journal.compact.copied").map_err(io)?;
            // Records written meanwhile: the bytes past `copied_to`, whole
            // records appended since, copied as they are.
            let mut store = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let Store::File {
                path,
                file,
                end,
                index: old,
                sync,
                ..
            } = &mut *store
            else {
                return Ok(None);
            };
            buf.resize((*end - copied_to) as usize, 0);
            source.read_exact_at(&mut buf, copied_to).map_err(io)?;
            writer.write_all(&buf).map_err(io)?;
            // They keep their order: only their offsets move.
            for (key, e) in old.iter().filter(|(_, e)| e.offset >= copied_to) {
                index.insert(
                    key.clone(),
                    Entry {
                        offset: e.offset - copied_to + at,
                        ..*e
                    },
                );
            }
            at += buf.len() as u64;
            writer.flush().map_err(io)?;
            drop(writer);
            if *sync {
                out.sync_data().map_err(io)?;
            }
            crate::failpoint::hit("http_journal.compact.rename").map_err(io)?;
            std::fs::rename(&tmp, &*path).map_err(io)?;
            // `out` was opened for appending: it is the journal now, whatever
            // the directory's sync below comes to.
            *file = Arc::new(out);
            *old = index;
            let kept = old.len();
            *end = at;
            if *sync {
                let dir = path.parent().unwrap_or(Path::new("."));
                crate::log::sync_dir(dir).map_err(|source| JournalError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(Some((kept, at)))
        })();
        match result {
            Ok(Some((kept, after))) => Ok(Compaction {
                kept,
                removed: before.0,
                bytes_before: before.1,
                bytes_after: after,
            }),
            Ok(None) => Ok(Compaction::default()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Whether every host of a NATS stream shares this journal (its
    /// bucket), rather than this bus alone.
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "nats")]
        if self.remote.is_some() {
            return true;
        }
        false
    }

    /// Whether records stay in memory (no file I/O, no NATS bucket: `put`
    /// never blocks).
    pub fn in_memory(&self) -> bool {
        #[cfg(feature = "nats")]
        if self.remote.is_some() {
            return false;
        }
        self.writes_nothing
    }

    /// Requests recorded (in memory or the file; a NATS bucket's are not
    /// counted).
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
    #[serde(default)]
    seq: Option<u64>,
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
        index.insert(
            record.key,
            Entry {
                offset: at + 8,
                len,
                seq: record.seq,
            },
        );
        at = end;
    }
    Ok((index, at))
}

/// `key`'s record in `store`, read under its lock.
fn get_in(store: &Store, key: &RequestKey) -> Result<Option<Journaled>, JournalError> {
    match store {
        Store::Memory { entries, .. } => Ok(entries.get(key).cloned()),
        Store::File { path, file, index, .. } => {
            let Some(&Entry { offset, len, .. }) = index.get(key) else {
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
            if record.key != *key {
                return Err(JournalError::Corrupt {
                    path: path.clone(),
                    offset,
                    reason: format!("the record there is {:?}'s, not {key:?}'s", record.key),
                });
            }
            Ok(Some((Arc::new(record.outcome), record.request)))
        }
    }
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
        j.put(key(1), None, ok("one")).unwrap();
        j.put(key(2), None, Recorded::Failed("connection-refused".into()))
            .unwrap();
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
        j.put(key(3), None, ok("three")).unwrap();
        drop(j);
        let j = RequestJournal::open_read_only(dir.path()).unwrap();
        assert_eq!(j.len(), 3);
        assert_eq!(j.get(&key(3)).unwrap().as_deref(), Some(&ok("three")));
    }

    #[test]
    fn a_last_record_with_a_bad_checksum_or_a_short_head_is_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let j = RequestJournal::open(dir.path(), false).unwrap();
        j.put(key(1), None, ok("one")).unwrap();
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
        j.put(key(1), None, ok("one")).unwrap();
        j.put(key(2), None, ok("two")).unwrap();
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

    /// Every key's answer, read back.
    fn answers(j: &RequestJournal, keys: impl IntoIterator<Item = u32>) -> Vec<Option<Recorded>> {
        keys.into_iter()
            .map(|i| j.get(&key(i)).unwrap().map(|r| (*r).clone()))
            .collect()
    }

    #[test]
    fn compaction_drops_records_below_the_floor_unless_kept_and_survives_reopening() {
        // Failpoints are process-wide, and the tests below set the
        // compaction's (`http_journal.compact.rename`): hold their lock so
        // none fires in this compaction.
        #[cfg(feature = "failpoints")]
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let j = RequestJournal::open(dir.path(), true).unwrap();
        // Events 0..20 numbered 100..120; event 3 dead-lettered (kept);
        // event 20's number is unknown (kept whatever the floor).
        for i in 0..20 {
            j.put(key(i), Some(100 + u64::from(i)), ok(&format!("body {i}")))
                .unwrap();
        }
        j.put(key(20), None, Recorded::Failed("timeout".into())).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        let expected = |i: u32| {
            (i == 3 || i >= 10).then(|| {
                if i == 20 {
                    Recorded::Failed("timeout".into())
                } else {
                    ok(&format!("body {i}"))
                }
            })
        };
        let done = j.compact(110, |k, _| k.event == "e3").unwrap();
        assert_eq!((done.kept, done.removed, done.bytes_before), (12, 9, before));
        let after = std::fs::metadata(&path).unwrap().len();
        assert_eq!(done.bytes_after, after);
        assert!(after < before, "{after} < {before}");
        assert_eq!(answers(&j, 0..21), (0..21).map(expected).collect::<Vec<_>>());
        // Nothing left to drop: the file is not rewritten.
        let again = j.compact(110, |k, _| k.event == "e3").unwrap();
        assert_eq!((again.removed, again.bytes_after), (0, after));
        // Appends go on in the new file, and reopening finds the same.
        j.put(key(21), Some(121), ok("body 21")).unwrap();
        drop(j);
        assert!(!dir.path().join(COMPACTING_FILE).exists());
        let j = RequestJournal::open(dir.path(), true).unwrap();
        assert_eq!(j.len(), 13);
        let mut want: Vec<_> = (0..21).map(expected).collect();
        want.push(Some(ok("body 21")));
        assert_eq!(answers(&j, 0..22), want);
        // A read-only journal (a replay's) is never rewritten.
        let ro = RequestJournal::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.compact(u64::MAX, |_, _| false).unwrap(), Compaction::default());
        assert_eq!(answers(&ro, 0..22), want);
    }

    /// A journal in `dir` holding requests 0..10 (event `i` numbered `i`),
    /// and a compaction below 5 running on a thread of its own, which
    /// pauses at `failpoint` (the caller removes it).
    #[cfg(feature = "failpoints")]
    fn compacting_paused_at(dir: &Path, failpoint: &str) -> (RequestJournal, std::thread::JoinHandle<Compaction>) {
        let j = RequestJournal::open(dir, false).unwrap();
        for i in 0..10 {
            j.put(key(i), Some(u64::from(i)), ok(&format!("body {i}"))).unwrap();
        }
        fail::cfg(failpoint, "pause").unwrap();
        let compacting = {
            let j = j.clone();
            std::thread::spawn(move || j.compact(5, |_, _| false).unwrap())
        };
        (j, compacting)
    }

    /// A lookup that would wait for the lock while a writer holds it (here
    /// a compaction paused before its rename) waits on a blocking thread:
    /// the runtime's thread goes on with other tasks meanwhile.
    #[cfg(feature = "failpoints")]
    #[test]
    fn a_lookup_behind_a_writer_leaves_the_runtime_thread_free() {
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (j, compacting) = compacting_paused_at(dir.path(), "http_journal.compact.rename");
        // Paused under the lock.
        while j.inner.try_lock().is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Should the lookup block the thread, nothing else would let the
        // compaction go: this does, late, and the order below tells.
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(std::time::Duration::from_secs(5)).is_err() {
                fail::remove("http_journal.compact.rename");
            }
        });
        let order = std::sync::Mutex::new(Vec::new());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let found = runtime.block_on(async {
            let lookup = async {
                let found = j.lookup(&key(7)).await.unwrap();
                order.lock().unwrap().push("lookup");
                found
            };
            let other = async {
                order.lock().unwrap().push("other task");
                fail::remove("http_journal.compact.rename");
            };
            tokio::join!(lookup, other).0
        });
        let _ = done.send(());
        assert_eq!(*order.lock().unwrap(), ["other task", "lookup"]);
        assert_eq!(found.map(|(outcome, _)| (*outcome).clone()), Some(ok("body 7")));
        compacting.join().unwrap();
        watchdog.join().unwrap();
    }

    /// A record's sync runs outside the journal's lock: while one record
    /// waits for the disk (its sync paused here), another plugin's record
    /// and lookup go on. Before, they waited for that sync.
    #[cfg(feature = "failpoints")]
    #[test]
    fn a_record_waiting_for_its_sync_holds_up_no_other_record() {
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let j = RequestJournal::open(dir.path(), true).unwrap();
        fail::cfg("http_journal.sync", "pause").unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let syncing = {
            let (j, order) = (j.clone(), order.clone());
            std::thread::spawn(move || {
                j.put(key(1), Some(1), ok("first")).unwrap();
                order.lock().unwrap().push("synced");
            })
        };
        // Should the sync hold the lock, nothing below could go on until
        // this lets the sync finish, late, and the order tells.
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = {
            let order = order.clone();
            std::thread::spawn(move || {
                if finished.recv_timeout(std::time::Duration::from_secs(5)).is_err() {
                    order.lock().unwrap().push("watchdog");
                    fail::remove("http_journal.sync");
                }
            })
        };
        // Written (and indexed) before its sync.
        while j.get(&key(1)).unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        j.put_with(key(2), Some(2), None, ok("second"), false).unwrap();
        assert_eq!(j.get(&key(2)).unwrap().map(|r| (*r).clone()), Some(ok("second")));
        order.lock().unwrap().push("other record");
        let _ = done.send(());
        fail::remove("http_journal.sync");
        syncing.join().unwrap();
        watchdog.join().unwrap();
        assert_eq!(*order.lock().unwrap(), ["other record", "synced"]);
    }

    /// Records put while a compaction copies the old ones are in the new
    /// file; a compaction whose rename fails leaves the journal as it was;
    /// the copy of one cut short by a crash is removed at the next open.
    #[cfg(feature = "failpoints")]
    #[test]
    fn compaction_keeps_records_put_meanwhile_and_a_failed_one_changes_nothing() {
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let (j, compacting) = compacting_paused_at(dir.path(), "http_journal.compact.copied");
        // The old records are being copied (the compaction is paused after
        // them, without the lock): a put goes through.
        while !dir.path().join(COMPACTING_FILE).exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        j.put(key(10), Some(10), ok("body 10")).unwrap();
        fail::remove("http_journal.compact.copied");
        let done = compacting.join().unwrap();
        assert_eq!((done.kept, done.removed), (6, 5));
        let want: Vec<_> = (0..11).map(|i| (i >= 5).then(|| ok(&format!("body {i}")))).collect();
        assert_eq!(answers(&j, 0..11), want);
        drop(j);
        let j = RequestJournal::open(dir.path(), false).unwrap();
        assert_eq!(answers(&j, 0..11), want);

        // A rename that fails: nothing changes, no copy is left behind.
        let bytes = std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
        fail::cfg("http_journal.compact.rename", "return").unwrap();
        let e = j.compact(8, |_, _| false).unwrap_err();
        fail::remove("http_journal.compact.rename");
        assert!(e.to_string().contains("http-journal.compacting"), "{e}");
        assert_eq!(std::fs::read(dir.path().join(JOURNAL_FILE)).unwrap(), bytes);
        assert!(!dir.path().join(COMPACTING_FILE).exists());
        assert_eq!(answers(&j, 0..11), want);
        drop(j);

        // A crash mid-copy leaves a partial copy: the next open removes it
        // and keeps the journal.
        std::fs::write(dir.path().join(COMPACTING_FILE), &bytes[..bytes.len() / 2]).unwrap();
        let j = RequestJournal::open(dir.path(), false).unwrap();
        assert!(!dir.path().join(COMPACTING_FILE).exists());
        assert_eq!(answers(&j, 0..11), want);
    }

    #[test]
    fn the_memory_journal_keeps_the_last_entries() {
        let j = RequestJournal::memory();
        for i in 0..(MEMORY_ENTRIES as u32 + 10) {
            j.put(key(i), None, ok("x")).unwrap();
        }
        assert_eq!(j.len(), MEMORY_ENTRIES);
        assert!(j.get(&key(0)).unwrap().is_none());
        assert!(j.get(&key(MEMORY_ENTRIES as u32 + 9)).unwrap().is_some());
    }

    /// A full memory journal evicts from the plugin holding the most
    /// entries: a quiet plugin's records outlive a busy one's flood. Before,
    /// the oldest entry went, whoever's it was.
    #[test]
    fn a_busy_plugin_never_evicts_a_quiet_ones_records() {
        let j = RequestJournal::memory();
        let quiet = RequestKey {
            plugin: "quiet".into(),
            event: "e0".into(),
            index: 0,
        };
        j.put(quiet.clone(), None, ok("quiet")).unwrap();
        for i in 0..(MEMORY_ENTRIES as u32 + 10) {
            j.put(key(i), None, ok("x")).unwrap();
        }
        assert_eq!(j.len(), MEMORY_ENTRIES);
        assert_eq!(j.get(&quiet).unwrap().as_deref(), Some(&ok("quiet")));
        assert!(j.get(&key(10)).unwrap().is_none(), "the busy plugin's oldest went");
    }
}
