//! The embedded event log: every published event, numbered and appended in
//! publish order to checksummed segment files, read back for `plugbus log`
//! and for replay.
//!
//! # Durability, exactly
//! Each [`Durability`] policy says when an event counts as *durable*, which
//! is when [`Bus::emit_durable`](crate::Bus::emit_durable) returns:
//!
//! | policy | durable when | survives a process crash | survives power loss |
//! |---|---|---|---|
//! | `always` | its batch is written and `fdatasync`ed | every durable event | every durable event |
//! | `batched` (default) | the next group sync (every [`LogOptions::sync_interval`], 5 ms) is done | every durable event, and every written one | every durable event |
//! | `off` | written to the OS (page cache) | every durable event | what the OS had flushed |
//!
//! A plain `emit` never waits: its event is written within a millisecond
//! (the writer groups frames into one `write` of up to 256 KiB or 1 ms). What a crash can lose is only what had not
//! reached the writer yet, plus, on power loss, what was not synced. On
//! reopening, a frame cut short by the crash (a *torn tail*) is truncated
//! with a warning; damage anywhere else is an error naming file and offset.
//!
//! # Layout
//! - `segment`: the file format, encoding and checked reading;
//! - `index`: per-segment correlation-id sidecars;
//! - `writer`: the thread that owns the active segment (batching, syncing,
//!   rolling, retention, overflow accounting);
//! - this module: [`EventLog`] (the writing handle the bus holds),
//!   [`LogReader`] (reading any log directory, also while it is written) and
//!   [`LogStats`].

mod index;
mod segment;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use index::CorrelationIndex;
pub use segment::Record;
use segment::{Damage, SegmentReader, list_segments};
pub(crate) use writer::sync_dir;
use writer::{Msg, Progress, Writer, WriterShared};

use crate::event::Event;

/// When an appended event counts as durable; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `fdatasync` after every batch, before acknowledging it.
    Always,
    /// Group commit: one `fdatasync` every [`LogOptions::sync_interval`].
    #[default]
    Batched,
    /// Never sync; the OS writes the page cache back when it chooses.
    Off,
}

impl Durability {
    /// `always`, `batched` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Always => "always",
            Durability::Batched => "batched",
            Durability::Off => "off",
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Durability::Always),
            "batched" => Ok(Durability::Batched),
            "off" => Ok(Durability::Off),
            other => Err(format!("unknown durability `{other}` (always, batched or off)")),
        }
    }
}

/// How the log is written. Every field has a default suited to an agent
/// service; see each for its scope and what happens at the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// When an event counts as durable. Default [`Durability::Batched`].
    pub durability: Durability,
    /// Period of the group sync under [`Durability::Batched`]. Default 5 ms:
    /// a durable emit waits 2.5 ms on average, and one `fdatasync` per
    /// period costs a few percent of one core at any event rate.
    pub sync_interval: Duration,
    /// Events waiting for the writer, at most. Default 65,536: about a sixth
    /// of a second of the writer's measured throughput, and a bounded amount
    /// of memory (the events themselves are shared with the plugins' queues).
    /// When full, a plain emit is still delivered live but not logged; the
    /// shortfall is counted ([`LogStatus::lost`]) and announced by a
    /// `plugbus.log.overflow` event. Durable emits are never refused.
    pub buffer_events: usize,
    /// Size at which a segment is closed and a new one started. Default
    /// 64 MiB: retention removes whole segments, so this is its granularity.
    pub segment_bytes: u64,
    /// Remove the oldest segments while the log is larger than this. Default:
    /// no limit (the log is the history plugins are rebuilt from).
    pub retention_bytes: Option<u64>,
    /// Remove segments whose last event is older than this. Default: no limit.
    pub retention_age: Option<Duration>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            durability: Durability::Batched,
            sync_interval: Duration::from_millis(5),
            buffer_events: 65_536,
            segment_bytes: 64 << 20,
            retention_bytes: None,
            retention_age: None,
        }
    }
}

/// Why the log could not be opened, read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// A file or directory of the log could not be read or written.
    #[error("event log {}: {reason}", path.display())]
    Io {
        /// The file or directory at fault.
        path: PathBuf,
        /// The operating system's error.
        reason: String,
    },
    /// A segment is damaged somewhere other than its torn tail.
    #[error("event log {} is corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the damaged frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Another process is writing this log directory.
    #[error("event log {} is in use by another process (its LOCK file is held)", path.display())]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// The bus was built without a log.
    #[error("the bus has no event log (BusBuilder::log_dir)")]
    Disabled,
    /// The event does not fit its schema (policy `Reject`): not published.
    #[error("not published: {0}")]
    Refused(String),
    /// The log stopped after a write failure; the reason.
    #[error("the event log stopped: {0}")]
    Failed(Arc<str>),
    /// The log was closed (the bus shut down) before the event was durable.
    #[error("the event log is closed")]
    Closed,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |e| LogError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// The writing side of a log directory, held by the bus. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    options: LogOptions,
    tx: std::sync::mpsc::Sender<Msg>,
    shared: Arc<WriterShared>,
    progress: watch::Receiver<Progress>,
    /// Highest sequence number handed out.
    last_seq: AtomicU64,
    /// Sequence number of the first event this process appended.
    opened_at: u64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held (locked) while the log is open for writing; released by `close`.
    lock: Mutex<Option<File>>,
}

/// A snapshot of a writing log's progress.
#[derive(Debug, Clone, Serialize)]
pub struct LogStatus {
    /// The log directory.
    pub dir: PathBuf,
    /// The policy.
    pub durability: Durability,
    /// Highest sequence number handed to an event.
    pub last_seq: u64,
    /// Highest sequence number written to the file.
    pub written_seq: u64,
    /// Highest sequence number durable under the policy.
    pub durable_seq: u64,
    /// Events waiting for the writer.
    pub queued: usize,
    /// Events delivered live but never logged (buffer full, or the log
    /// failed) since the log was opened.
    pub lost: u64,
    /// Why the log stopped, if it did.
    pub failed: Option<String>,
}

impl EventLog {
    /// Opens (creating if needed) the log in `dir` for writing: takes its
    /// lock, truncates a torn tail of the last segment (with a warning),
    /// and starts the writer thread.
    ///
    /// # Errors
    /// [`LogError::Locked`] if another process writes it, [`LogError::Corrupt`]
    /// naming the file and offset if the last segment is damaged beyond a
    /// torn tail, [`LogError::Io`] for file-system errors.
    pub fn open(dir: impl Into<PathBuf>, options: LogOptions) -> Result<EventLog, LogError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LogError::Locked { path: dir }),
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let mut segments = list_segments(&dir).map_err(io_err(&dir))?;
        let (active_path, (last_seq, index)) = match segments.pop() {
            Some((first, path)) => (path.clone(), recover(&path, first)?),
            None => {
                let path = dir.join(segment::segment_name(1));
                writer::create_segment(&path, &dir, options.durability).map_err(io_err(&path))?;
                (path, (0, CorrelationIndex::default()))
            }
        };
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&active_path)
            .map_err(io_err(&active_path))?;
        let segment_bytes = file.metadata().map_err(io_err(&active_path))?.len();
        let sealed = segments
            .into_iter()
            .map(|(_, path)| {
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                (path, bytes)
            })
            .collect();
        let progress = Progress {
            written: last_seq,
            durable: last_seq,
            ..Progress::default()
        };
        let (progress_tx, progress_rx) = watch::channel(progress);
        let shared = Arc::new(WriterShared {
            queued: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
            lost_first: AtomicU64::new(0),
            lost_last: AtomicU64::new(0),
            progress: progress_tx,
            on_overflow: OnceLock::new(),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Writer::new(
            dir.clone(),
            options.clone(),
            file,
            active_path,
            segment_bytes,
            last_seq,
            sealed,
            shared.clone(),
            index,
        );
        let thread = std::thread::Builder::new()
            .name("plugbus-log".into())
            .spawn(move || w.run(rx))
            .map_err(io_err(&dir))?;
        tracing::info!(dir = %dir.display(), last_seq, durability = %options.durability, "event log open");
        Ok(EventLog {
            inner: Arc::new(Inner {
                dir,
                options,
                tx,
                shared,
                progress: progress_rx,
                last_seq: AtomicU64::new(last_seq),
                opened_at: last_seq + 1,
                thread: Mutex::new(Some(thread)),
                lock: Mutex::new(Some(lock)),
            }),
        })
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The options it was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.inner.options
    }

    /// The highest sequence number handed out so far (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.inner.last_seq.load(Ordering::Acquire)
    }

    /// The first sequence number appended by this process.
    pub fn opened_at(&self) -> u64 {
        self.inner.opened_at
    }

    /// Hands `event` the next sequence number and queues it for the writer.
    /// The caller serialises calls (the bus's publish lock), which makes
    /// sequence order publish order. A plain append (`durable == false`)
    /// over the buffer budget is not queued: it is counted as lost and
    /// `false` is returned; the event keeps its sequence number, which then
    /// is a gap in the log that the overflow report names.
    pub(crate) fn append(&self, event: &Event, durable: bool) -> (u64, bool) {
        let inner = &self.inner;
        let seq = inner.last_seq.load(Ordering::Relaxed) + 1;
        inner.last_seq.store(seq, Ordering::Release);
        event.set_seq(seq);
        let shared = &inner.shared;
        let queued = shared.queued.fetch_add(1, Ordering::AcqRel);
        if !durable && queued >= inner.options.buffer_events {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.count_lost(seq);
            return (seq, false);
        }
        if inner.tx.send(Msg::Append(seq, event.clone())).is_err() {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.count_lost(seq);
            return (seq, false);
        }
        (seq, true)
    }

    fn count_lost(&self, seq: u64) {
        let shared = &self.inner.shared;
        shared.lost.fetch_add(1, Ordering::Relaxed);
        let _ = shared
            .lost_first
            .compare_exchange(0, seq, Ordering::AcqRel, Ordering::Relaxed);
        shared.lost_last.store(seq, Ordering::Release);
    }

    /// Sets what is called (on the writer thread) when events were lost to
    /// a full buffer: `(lost since last call, first lost seq, last lost seq)`,
    /// at most once a second. Only the first hook set is kept.
    pub(crate) fn on_overflow(&self, hook: impl Fn(u64, u64, u64) + Send + Sync + 'static) {
        let _ = self.inner.shared.on_overflow.set(Box::new(hook));
    }

    /// Waits until the event numbered `seq` is durable under the policy.
    ///
    /// # Errors
    /// [`LogError::Failed`] if the log stopped on a write error first,
    /// [`LogError::Closed`] if it was closed first.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), LogError> {
        self.wait_until(seq, |p| p.durable).await
    }

    /// Waits until the event numbered `seq` is written to the file (readable
    /// by a [`LogReader`]), whatever the durability policy.
    ///
    /// # Errors
    /// As for [`wait_durable`](Self::wait_durable).
    pub async fn wait_written(&self, seq: u64) -> Result<(), LogError> {
        self.wait_until(seq, |p| p.written).await
    }

    /// Waits until `reached(progress) >= seq`, or the log fails or closes.
    async fn wait_until(&self, seq: u64, reached: fn(&Progress) -> u64) -> Result<(), LogError> {
        let mut rx = self.inner.progress.clone();
        let p = rx
            .wait_for(|p| reached(p) >= seq || p.failed.is_some() || p.closed)
            .await
            .map_err(|_| LogError::Closed)?;
        if reached(&p) >= seq {
            Ok(())
        } else if let Some(reason) = &p.failed {
            Err(LogError::Failed(reason.clone()))
        } else {
            Err(LogError::Closed)
        }
    }

    /// Progress and counters.
    pub fn status(&self) -> LogStatus {
        let p = self.inner.progress.borrow().clone();
        LogStatus {
            dir: self.inner.dir.clone(),
            durability: self.inner.options.durability,
            last_seq: self.last_seq(),
            written_seq: p.written,
            durable_seq: p.durable,
            queued: self.inner.shared.queued.load(Ordering::Relaxed),
            lost: self.inner.shared.lost.load(Ordering::Relaxed),
            failed: p.failed.map(|f| f.to_string()),
        }
    }

    /// Writes and syncs everything queued, stops the writer and releases
    /// the directory's lock (another bus may then open it). Later appends
    /// are counted as lost. Idempotent; blocks until the writer has exited.
    pub fn close(&self) {
        let _ = self.inner.tx.send(Msg::Close);
        let thread = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!(dir = %self.inner.dir.display(), "the event log writer panicked");
        }
        self.inner.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Close);
        if let Some(thread) = self.thread.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("dir", &self.inner.dir)
            .field("last_seq", &self.last_seq())
            .finish_non_exhaustive()
    }
}

/// Checks the last segment of a log being opened for writing; truncates a
/// torn tail. Returns the last sequence number in it (or the one before its
/// first, when it is empty), and its correlation index so far.
fn recover(path: &Path, first: u64) -> Result<(u64, CorrelationIndex), LogError> {
    let mut index = CorrelationIndex::default();
    // A sidecar of the active segment would go stale as it grows.
    let _ = std::fs::remove_file(index::index_path(path));
    let corrupt = |offset, reason| LogError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    let mut last = first.saturating_sub(1);
    let damage = match SegmentReader::open(path, first).map_err(io_err(path))? {
        Err(d) => Some(d),
        Ok(mut r) => loop {
            match r.next_frame(0).map_err(io_err(path))? {
                Ok(Some(frame)) => {
                    last = frame.seq;
                    if let Ok(record) = frame.record()
                        && let Some(correlation) = &record.correlation_id
                    {
                        index.add(correlation, frame.seq);
                    }
                }
                Ok(None) => break None,
                Err(d) => break Some(d),
            }
        },
    };
    match damage {
        None => Ok((last, index)),
        Some(Damage::Corrupt { offset, reason }) => Err(corrupt(offset, reason)),
        Some(Damage::TornTail { offset, reason }) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_err(path))?;
            let len = file.metadata().map_err(io_err(path))?.len();
            if offset < segment::MAGIC.len() as u64 {
                // Not even a whole header: start the file over.
                file.set_len(0).map_err(io_err(path))?;
                use std::io::Write;
                (&file).write_all(&segment::MAGIC).map_err(io_err(path))?;
            } else {
                file.set_len(offset).map_err(io_err(path))?;
            }
            file.sync_all().map_err(io_err(path))?;
            tracing::warn!(
                file = %path.display(),
                offset,
                dropped_bytes = len.saturating_sub(offset),
                last_seq = last,
                "event log: torn tail truncated ({reason})"
            );
            Ok((last, index))
        }
    }
}

/// Reads a log directory in sequence order, from any sequence number. Works
/// on a log another process is writing: it reads what is written when each
/// segment is opened, and a frame still being written at the very end is
/// treated as the end.
///
/// ```no_run
/// for record in plugbus::LogReader::open("agent-log", 1)? {
///     let record = record?;
///     println!("{} {}", record.seq, record.name);
/// }
/// # Ok::<(), plugbus::LogError>(())
/// ```
pub struct LogReader {
    segments: Vec<(u64, PathBuf)>,
    /// Index in `segments` of the next one to open.
    next: usize,
    current: Option<(PathBuf, SegmentReader, bool)>,
    from: u64,
    done: bool,
    /// Only the events of this correlation id.
    correlation: Option<String>,
    /// In the current segment, the sequence numbers its correlation index
    /// lists for `correlation` (none: scanning).
    wanted: Option<std::collections::VecDeque<u64>>,
}

impl LogReader {
    /// A reader of `dir` starting at the first event with `seq >= from`.
    ///
    /// # Errors
    /// [`LogError::Io`] if the directory cannot be listed (a missing
    /// directory included).
    pub fn open(dir: impl AsRef<Path>, from: u64) -> Result<LogReader, LogError> {
        let dir = dir.as_ref();
        let segments = list_segments(dir).map_err(io_err(dir))?;
        // Start at the last segment whose first seq is <= from.
        let next = segments.iter().rposition(|(first, _)| *first <= from).unwrap_or(0);
        Ok(LogReader {
            segments,
            next,
            current: None,
            from,
            done: false,
            correlation: None,
            wanted: None,
        })
    }

    /// Only the events whose correlation id is `id`. Sealed segments are
    /// looked up in their correlation index (those without `id` are not
    /// even opened); the active one is scanned.
    pub fn correlation(mut self, id: impl Into<String>) -> LogReader {
        self.correlation = Some(id.into());
        self
    }

    fn advance(&mut self) -> Result<Option<segment::Frame>, LogError> {
        loop {
            if self.current.is_none() {
                let Some((first, path)) = self.segments.get(self.next).cloned() else {
                    return Ok(None);
                };
                let last = self.next + 1 == self.segments.len();
                self.next += 1;
                self.wanted = None;
                if let Some(id) = &self.correlation
                    && !last
                    && let Some(seqs) = CorrelationIndex::lookup(&path, id)
                {
                    let wanted: std::collections::VecDeque<u64> =
                        seqs.into_iter().filter(|s| *s >= self.from).collect();
                    if wanted.is_empty() {
                        continue;
                    }
                    self.wanted = Some(wanted);
                }
                let reader = match SegmentReader::open(&path, first) {
                    Ok(Ok(r)) => r,
                    Ok(Err(Damage::TornTail { .. })) if last => return Ok(None),
                    Ok(Err(Damage::TornTail { offset, reason } | Damage::Corrupt { offset, reason })) => {
                        return Err(LogError::Corrupt { path, offset, reason });
                    }
                    // A segment removed by retention while we read: skip it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                };
                self.current = Some((path, reader, last));
            }
            let Some((path, reader, last)) = self.current.as_mut() else {
                continue;
            };
            let skip = match &self.wanted {
                Some(wanted) => match wanted.front() {
                    Some(seq) => *seq,
                    None => {
                        // Every indexed frame of this segment was read.
                        self.current = None;
                        continue;
                    }
                },
                None => self.from,
            };
            match reader.next_frame(skip).map_err(io_err(path))? {
                Ok(Some(frame)) if frame.seq < self.from => continue,
                Ok(Some(frame)) => {
                    if let Some(wanted) = &mut self.wanted {
                        while wanted.front().is_some_and(|s| *s <= frame.seq) {
                            wanted.pop_front();
                        }
                    }
                    return Ok(Some(frame));
                }
                Ok(None) => self.current = None,
                Err(Damage::TornTail { .. }) if *last => return Ok(None),
                Err(Damage::TornTail { offset, reason } | Damage::Corrupt { offset, reason }) => {
                    return Err(LogError::Corrupt {
                        path: path.clone(),
                        offset,
                        reason,
                    });
                }
            }
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<Record, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let item = match self.advance() {
                Ok(Some(frame)) => match frame.record() {
                    Ok(record) => Ok(record),
                    Err(e) => {
                        let path = self.current.as_ref().map(|c| c.0.clone()).unwrap_or_default();
                        Err(LogError::Corrupt {
                            path,
                            offset: frame.offset,
                            reason: format!("frame {} holds invalid JSON: {e}", frame.seq),
                        })
                    }
                },
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => Err(e),
            };
            match item {
                Ok(record)
                    if self
                        .correlation
                        .as_deref()
                        .is_some_and(|c| record.correlation_id.as_deref() != Some(c)) =>
                {
                    continue;
                }
                Ok(record) => return Some(Ok(record)),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// What `plugbus log stats` reports: read from the files, every frame checked.
#[derive(Debug, Clone, Serialize)]
pub struct LogStats {
    /// The log directory.
    pub dir: PathBuf,
    /// Segment files.
    pub segments: usize,
    /// Bytes on disk.
    pub bytes: u64,
    /// Events in the log.
    pub events: u64,
    /// First sequence number (`None` when empty).
    pub first_seq: Option<u64>,
    /// Last sequence number (`None` when empty).
    pub last_seq: Option<u64>,
    /// Time of the first event.
    pub first_time_unix_nanos: Option<u64>,
    /// Time of the last event.
    pub last_time_unix_nanos: Option<u64>,
    /// Sequence numbers missing from the log up to the last one: events
    /// that were delivered live but not logged (see `plugbus.log.overflow`).
    pub gaps: u64,
}

impl LogStats {
    /// Reads and checks every frame of the log in `dir`.
    ///
    /// # Errors
    /// [`LogError::Io`] or [`LogError::Corrupt`], naming the file.
    pub fn read(dir: impl AsRef<Path>) -> Result<LogStats, LogError> {
        let dir = dir.as_ref();
        let segments = list_segments(dir).map_err(io_err(dir))?;
        let mut stats = LogStats {
            dir: dir.to_owned(),
            segments: segments.len(),
            bytes: segments
                .iter()
                .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                .sum(),
            events: 0,
            first_seq: None,
            last_seq: None,
            first_time_unix_nanos: None,
            last_time_unix_nanos: None,
            gaps: 0,
        };
        let mut reader = LogReader::open(dir, 0)?;
        // A segment is named by the first number it was opened for: numbers
        // from there to its first frame were lost too.
        let mut prev = segments.first().map_or(0, |(first, _)| first.saturating_sub(1));
        while let Some(frame) = reader.advance()? {
            stats.events += 1;
            if stats.first_seq.is_none() {
                stats.first_seq = Some(frame.seq);
                stats.first_time_unix_nanos = Some(frame.time_unix_nanos);
            }
            stats.gaps += frame.seq.saturating_sub(prev + 1);
            prev = frame.seq;
            stats.last_seq = Some(frame.seq);
            stats.last_time_unix_nanos = Some(frame.time_unix_nanos);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::SystemTime;

    fn options() -> LogOptions {
        LogOptions {
            durability: Durability::Always,
            ..LogOptions::default()
        }
    }

    async fn append_n(log: &EventLog, n: u64) -> u64 {
        let mut last = 0;
        for i in 0..n {
            let ev = Event::new("e", json!({ "i": i }));
            last = log.append(&ev, true).0;
        }
        log.wait_durable(last).await.unwrap();
        last
    }

    #[tokio::test]
    async fn appends_are_numbered_durable_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), options()).unwrap();
        assert_eq!(append_n(&log, 10).await, 10);
        assert!(
            matches!(EventLog::open(dir.path(), options()), Err(LogError::Locked { .. })),
            "a second writer is refused"
        );
        log.close();
        drop(log);
        let log = EventLog::open(dir.path(), options()).unwrap();
        assert_eq!(log.last_seq(), 10, "numbering continues after a reopen");
        assert_eq!(append_n(&log, 5).await, 15);
        let seqs: Vec<u64> = LogReader::open(dir.path(), 0)
            .unwrap()
            .map(|r| r.unwrap().seq)
            .collect();
        assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
        let from: Vec<u64> = LogReader::open(dir.path(), 12)
            .unwrap()
            .map(|r| r.unwrap().seq)
            .collect();
        assert_eq!(from, [12, 13, 14, 15]);
    }

    #[tokio::test]
    async fn segments_roll_and_retention_removes_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: 2_000,
            retention_bytes: Some(6_000),
            ..options()
        };
        let log = EventLog::open(dir.path(), opts).unwrap();
        append_n(&log, 400).await;
        log.close();
        let stats = LogStats::read(dir.path()).unwrap();
        assert!(stats.segments >= 2, "{stats:?}");
        assert!(stats.bytes <= 6_000 + 2_000, "{stats:?}");
        assert_eq!(stats.last_seq, Some(400));
        assert!(stats.first_seq.unwrap() > 1, "old segments were removed: {stats:?}");
        assert_eq!(stats.gaps, 0);
        assert_eq!(stats.events, 400 - stats.first_seq.unwrap() + 1);
    }

    #[tokio::test]
    async fn a_torn_tail_is_truncated_on_open_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), options()).unwrap();
        append_n(&log, 3).await;
        log.close();
        drop(log);
        let seg = dir.path().join(segment::segment_name(1));
        let len = std::fs::metadata(&seg).unwrap().len();
        // A crash in the middle of the fourth frame.
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
            f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 4, 0]).unwrap();
        }
        let log = EventLog::open(dir.path(), options()).unwrap();
        assert_eq!(log.last_seq(), 3);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len, "the torn frame is gone");
        append_n(&log, 1).await;
        log.close();
        drop(log);
        // Flip a byte inside frame 2: corruption, named.
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[segment::MAGIC.len() + 120] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let err = EventLog::open(dir.path(), options()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LogError::Corrupt { .. }), "{text}");
        assert!(text.contains("00000000000000000001.seg"), "{text}");
        let read: Vec<_> = LogReader::open(dir.path(), 0).unwrap().collect();
        assert!(read.last().unwrap().is_err());
    }

    #[tokio::test]
    async fn overflow_is_counted_and_reported_not_silent() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            buffer_events: 0,
            ..options()
        };
        let log = EventLog::open(dir.path(), opts).unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r = reports.clone();
        log.on_overflow(move |lost, first, last| r.lock().unwrap().push((lost, first, last)));
        for _ in 0..3 {
            let (_, queued) = log.append(&Event::new("x", json!(null)), false);
            assert!(!queued);
        }
        // A durable append is never refused, and wakes the writer to report.
        let (seq, queued) = log.append(&Event::new("y", json!(null)), true);
        assert!(queued);
        log.wait_durable(seq).await.unwrap();
        log.close();
        assert_eq!(log.status().lost, 3);
        assert_eq!(*reports.lock().unwrap(), [(3, 1, 3)]);
        let stats = LogStats::read(dir.path()).unwrap();
        assert_eq!((stats.events, stats.gaps), (1, 3));
    }

    #[tokio::test]
    async fn sealed_segments_index_correlation_ids_and_a_missing_index_means_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: 1_500,
            ..options()
        };
        let log = EventLog::open(dir.path(), opts.clone()).unwrap();
        let mut last = 0;
        for i in 0..60u64 {
            let run = ["a", "b", "c"][(i % 3) as usize];
            let ev = Event::new("e", json!({ "i": i })).with_correlation_id(run);
            last = log.append(&ev, true).0;
        }
        log.wait_durable(last).await.unwrap();
        log.close();
        drop(log);
        let indexes = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "cidx"))
            .count();
        assert!(indexes >= 3, "one sidecar per sealed segment: {indexes}");
        let of = |id: &str| -> Vec<u64> {
            LogReader::open(dir.path(), 0)
                .unwrap()
                .correlation(id)
                .map(|r| r.unwrap().seq)
                .collect()
        };
        let expected: Vec<u64> = (1..=60).filter(|s| (s - 1) % 3 == 1).collect();
        assert_eq!(of("b"), expected);
        assert!(of("zzz").is_empty());
        // From a sequence number, across the index.
        let from: Vec<u64> = LogReader::open(dir.path(), 30)
            .unwrap()
            .correlation("b")
            .map(|r| r.unwrap().seq)
            .collect();
        assert_eq!(from, expected.iter().copied().filter(|s| *s >= 30).collect::<Vec<_>>());
        // Without sidecars (deleted, or a log from before them): the same, by scanning.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cidx") {
                std::fs::remove_file(p).unwrap();
            }
        }
        assert_eq!(of("b"), expected);
        // Reopening keeps indexing the active segment, including what it held.
        let log = EventLog::open(dir.path(), opts).unwrap();
        for i in 0..30u64 {
            let ev = Event::new("e", json!({ "i": i })).with_correlation_id("b");
            last = log.append(&ev, true).0;
        }
        log.wait_durable(last).await.unwrap();
        log.close();
        let all_b = of("b");
        assert_eq!(all_b.len(), expected.len() + 30, "{all_b:?}");
    }

    #[tokio::test]
    async fn retention_by_age_removes_old_sealed_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: 1_000,
            ..options()
        };
        let log = EventLog::open(dir.path(), opts.clone()).unwrap();
        append_n(&log, 100).await;
        log.close();
        drop(log);
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 3);
        // Age the two oldest segments by two hours.
        let old = SystemTime::now() - Duration::from_secs(7200);
        for (_, path) in &segments[..2] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let log = EventLog::open(
            dir.path(),
            LogOptions {
                retention_age: Some(Duration::from_secs(3600)),
                ..opts
            },
        )
        .unwrap();
        let seq = log.append(&Event::new("after", json!(null)), true).0;
        log.wait_durable(seq).await.unwrap();
        log.close();
        let left = list_segments(dir.path()).unwrap();
        assert_eq!(
            left.len(),
            segments.len() - 2,
            "the two aged segments are gone, the rest kept"
        );
        assert_eq!(left[0].0, segments[2].0);
    }

    #[test]
    fn durability_parses() {
        assert_eq!("always".parse::<Durability>(), Ok(Durability::Always));
        assert!("sometimes".parse::<Durability>().unwrap_err().contains("always"));
    }
}
