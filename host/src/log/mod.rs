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
//! | `batched` (default) | the next group sync is done: every [`LogOptions::sync_interval`] (5 ms), or at most 1 ms after the last one when a caller waits | every durable event, and every written one | every durable event |
//! | `off` | written to the OS (page cache) | every durable event | what the OS had flushed |
//!
//! A plain `emit` never waits: its event is written within a millisecond
//! (the writer groups frames into one `write` of up to 256 KiB or 1 ms). What a crash can lose is only what had not
//! reached the writer yet, plus, on power loss, what was not synced. On
//! reopening, damage past what was synced (a frame cut short by the crash,
//! zero pages and whatever follows them: a *torn tail*) is truncated with a
//! warning; damage to what was synced (the *durable mark* says how far that
//! is), even to the last frame, is an error naming file and offset.
//!
//! An event too large for a frame ([`segment::MAX_FRAME`], 64 MiB) is never
//! acknowledged: a durable emit is refused with [`LogError::TooLarge`], a
//! plain one is delivered live but not logged (counted in
//! [`LogStatus::lost`] and [`LogStatus::oversize`], with a warning).
//!
//! # Layout
//! - `segment`: the file format, encoding and checked reading;
//! - `durable`: the durable mark (how far the active segment is synced);
//! - `index`: per-segment correlation-id sidecars;
//! - `writer`: the thread that owns the active segment (batching, syncing,
//!   rolling, retention, overflow accounting);
//! - this module: [`EventLog`] (the writing handle the bus holds),
//!   [`LogReader`] (reading any log directory, also while it is written) and
//!   [`LogStats`].

mod durable;
mod index;
mod segment;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use index::CorrelationIndex;
pub use segment::MAX_FRAME;
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
    /// Group commit: one `fdatasync` every [`LogOptions::sync_interval`],
    /// sooner (1 ms after the last) when a caller waits for durability.
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
    /// Period of the group sync under [`Durability::Batched`]: the longest
    /// a plain emit stays unsynced (what a power loss can take). Default
    /// 5 ms: one `fdatasync` per period costs a few percent of one core at
    /// any event rate. A caller waiting for its events to be durable (a
    /// durable emit: `POST /events`, an OTLP export, a follow-up on NATS)
    /// does not wait for the period: the writer writes at once and syncs
    /// as soon as 1 ms has passed since its last sync (or this period, if
    /// shorter), one sync for every waiter since; so durable emits cost at
    /// most 1,000 syncs a second.
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
    /// The CLI and the Python package refuse less than [`MIN_SEGMENT_BYTES`].
    pub segment_bytes: u64,
    /// Remove the oldest segments while the log is larger than this. Default:
    /// no limit (the log is the history plugins are rebuilt from).
    pub retention_bytes: Option<u64>,
    /// Remove segments whose last event is older than this. Default: no limit.
    pub retention_age: Option<Duration>,
    /// The lowest sequence number a consumer still needs when the log opens
    /// (a kept plugin snapshot, say); moved later with
    /// [`EventLog::set_retention_floor`]. Default 0: no floor.
    pub retention_floor: u64,
}

/// The smallest segment the CLI (`--log-segment-bytes`) and the Python
/// package accept: smaller ones would be rolled (a file created and the
/// directory synced) every few events. The library itself takes any size
/// (its tests roll segments of a few frames).
pub const MIN_SEGMENT_BYTES: u64 = 4 << 10;

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            durability: Durability::Batched,
            sync_interval: Duration::from_millis(5),
            buffer_events: 65_536,
            segment_bytes: 64 << 20,
            retention_bytes: None,
            retention_age: None,
            retention_floor: 0,
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
    /// Another bus is writing this log directory: in another process, or
    /// in this one (its LOCK is held per open, not per process). A process
    /// forked from one holding it holds it too until it exits.
    #[error(
        "event log {} is in use by another bus, in this process or another (its LOCK file is held; a process forked from the one that opened it holds it too until it exits)",
        path.display()
    )]
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
    /// The event's frame would pass the log's frame limit: not published
    /// (it could not be read back).
    #[error("not published: the event takes {bytes} bytes in the event log, over its limit of {limit} bytes per event")]
    TooLarge {
        /// Its frame's length (an upper bound).
        bytes: usize,
        /// [`MAX_FRAME`].
        limit: usize,
    },
    /// On NATS: the stream refuses a message this large (the server's
    /// `max_payload` or the stream's `max_msg_size`): not stored, and no
    /// retry could store it. The event's id and the server's answer.
    #[error("not published: event {0} is too large for the NATS stream ({1})")]
    TooLargeForStream(String, String),
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

/// A position retention keeps while this lives ([`EventLog::pin`]).
pub(crate) struct LogPin {
    shared: Arc<WriterShared>,
    id: u64,
}

impl LogPin {
    /// Moves the held position to `seq` (a reader that has gone past the
    /// events before it no longer needs them kept).
    pub(crate) fn advance(&self, seq: u64) {
        if let Some(held) = self
            .shared
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&self.id)
        {
            *held = (*held).max(seq);
        }
    }
}

impl Drop for LogPin {
    fn drop(&mut self) {
        self.shared
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

impl std::fmt::Debug for LogPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogPin").field("id", &self.id).finish()
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
    /// The writer thread, to wake it (`EventLog::wake_writer`).
    writer: std::thread::Thread,
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
    /// The group-sync period under [`Durability::Batched`], in milliseconds.
    pub sync_interval_ms: u64,
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
    /// Of `lost`, events too large for a frame ([`MAX_FRAME`]).
    pub oversize: u64,
    /// The retention floor: the lowest sequence number a consumer still
    /// needs (0: none), whether set ([`EventLog::set_retention_floor`]) or
    /// held by a plugin reading back what its full queue left in the log.
    pub retention_floor: u64,
    /// Segments the size limit removed although they held events at or
    /// above the retention floor (each also a warning with its range).
    pub floor_breaches: u64,
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
    /// naming the file and offset if the last segment is damaged within
    /// what was recorded as synced (or, in a log without a durable mark,
    /// beyond the shape of a torn tail), [`LogError::Io`] for file-system
    /// errors.
    pub fn open(dir: impl Into<PathBuf>, options: LogOptions) -> Result<EventLog, LogError> {
        let dir = dir.into();
        if dir.exists() && !dir.is_dir() {
            return Err(io_err(&dir)(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "a file, not a directory: a log is a directory of segments",
            )));
        }
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
        let (mut segments, mark) = segments_and_mark(&dir)?;
        let (active_path, (last_seq, index)) = match segments.pop() {
            Some((first, path)) => (path.clone(), recover(&path, first, mark.synced_len(first))?),
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
        // What recovery kept is synced now, and recorded as such.
        file.sync_data().map_err(io_err(&active_path))?;
        let active_first = segment::parse_segment_name(&active_path).unwrap_or(last_seq + 1);
        let mark = durable::MarkFile::open(
            &dir,
            durable::Mark {
                first_seq: active_first,
                synced_len: segment_bytes,
            },
        )
        .map_err(|e| {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot record the durable mark: it is not updated, so damage after a power loss is judged against an older one (a lower bound)");
        })
        .ok();
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
            on_retained: OnceLock::new(),
            oversize: AtomicU64::new(0),
            retention_floor: AtomicU64::new(options.retention_floor),
            pins: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            next_pin: AtomicU64::new(0),
            floor_breaches: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            wanted: AtomicU64::new(0),
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
            mark,
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
                writer: thread.thread().clone(),
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
        self.wake_writer(queued + 1);
        (seq, true)
    }

    /// Wakes the writer after an append when it must: under `always` (each
    /// event is synced at once), when it sleeps idle, or when `queued`
    /// events reach a multiple of [`writer::WAKE_BACKLOG`]. Otherwise it is
    /// polling on its own clock (`Writer::next_message`).
    fn wake_writer(&self, queued: usize) {
        let inner = &self.inner;
        let shared = &inner.shared;
        let wake = inner.options.durability == Durability::Always || queued.is_multiple_of(writer::WAKE_BACKLOG) || {
            // Pairs with the writer's fence between saying it sleeps
            // and looking at the channel once more.
            fence(Ordering::SeqCst);
            shared.asleep.load(Ordering::Relaxed) && shared.asleep.swap(false, Ordering::AcqRel)
        };
        if wake {
            inner.writer.unpark();
        }
    }

    /// Checks that `event` fits a frame of the log, so that it can be read
    /// back once acknowledged. A bound that serialises nothing settles all
    /// but events near the limit; for those, the payload is serialised here
    /// (the text is kept for the plugins and the writer).
    ///
    /// # Errors
    /// [`LogError::TooLarge`] with its frame's length and the limit.
    pub fn check_size(&self, event: &Event) -> Result<(), LogError> {
        // The cheap bound first: it settles nearly every event without
        // serialising its payload on the publisher's thread.
        if segment::frame_len_bound(event) <= MAX_FRAME {
            return Ok(());
        }
        let bytes = segment::max_frame_len(event);
        if bytes > MAX_FRAME {
            return Err(LogError::TooLarge {
                bytes,
                limit: MAX_FRAME,
            });
        }
        Ok(())
    }

    /// Sets the retention floor: the lowest sequence number some consumer
    /// still needs (the oldest kept plugin snapshot, say); 0 for none.
    /// Retention by age never removes a segment holding an event at or
    /// above it; segments wholly below it go as usual. The size limit
    /// ([`LogOptions::retention_bytes`]) is a disk budget and wins: such a
    /// segment is removed anyway, with a warning naming its sequence range,
    /// and counted in [`LogStatus::floor_breaches`]. Takes effect at the
    /// next segment roll.
    pub fn set_retention_floor(&self, seq: u64) {
        self.inner.shared.retention_floor.store(seq, Ordering::Release);
    }

    /// Holds back retention from `seq` on while the returned pin lives (or
    /// from where [`LogPin::advance`] moved it), as the retention floor does
    /// (the size limit still wins, loudly): a plugin reading events its full
    /// queue left in the log keeps those it has not read yet. The floor
    /// reported in
    /// [`LogStatus::retention_floor`] counts pins.
    pub(crate) fn pin(&self, seq: u64) -> LogPin {
        let shared = self.inner.shared.clone();
        let id = shared.next_pin.fetch_add(1, Ordering::Relaxed);
        shared.pins.lock().unwrap_or_else(|e| e.into_inner()).insert(id, seq);
        LogPin { shared, id }
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

    /// Sets what is called (on the writer thread: it must not block) after
    /// retention removed segments, with the first sequence number the log
    /// still holds. Only the first hook set is kept.
    pub(crate) fn on_retained(&self, hook: impl Fn(u64) + Send + Sync + 'static) {
        let _ = self.inner.shared.on_retained.set(Box::new(hook));
    }

    /// Waits until the event numbered `seq` is durable under the policy.
    ///
    /// # Errors
    /// [`LogError::Failed`] if the log stopped on a write error first,
    /// [`LogError::Closed`] if it was closed first.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), LogError> {
        self.want_durable(seq);
        self.wait_until(seq, |p| p.durable).await
    }

    /// Waits until the event numbered `seq` is durable, at the group
    /// sync's own pace (no early sync): for bookkeeping no caller waits on
    /// (plugin snapshots, dead letters).
    ///
    /// # Errors
    /// As for [`wait_durable`](Self::wait_durable).
    pub(crate) async fn wait_durable_in_turn(&self, seq: u64) -> Result<(), LogError> {
        self.wait_until(seq, |p| p.durable).await
    }

    /// Tells the writer that a caller waits for `seq` to be durable: its
    /// events are written without waiting for more, and under `batched`
    /// the group sync is made early (see [`LogOptions::sync_interval`]).
    fn want_durable(&self, seq: u64) {
        let inner = &self.inner;
        if inner.options.durability == Durability::Always || inner.progress.borrow().durable >= seq {
            return;
        }
        if inner.shared.wanted.fetch_max(seq, Ordering::AcqRel) < seq {
            inner.writer.unpark();
        }
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
            sync_interval_ms: u64::try_from(self.inner.options.sync_interval.as_millis()).unwrap_or(u64::MAX),
            last_seq: self.last_seq(),
            written_seq: p.written,
            durable_seq: p.durable,
            queued: self.inner.shared.queued.load(Ordering::Relaxed),
            lost: self.inner.shared.lost.load(Ordering::Relaxed),
            oversize: self.inner.shared.oversize.load(Ordering::Relaxed),
            retention_floor: self.inner.shared.floor(),
            floor_breaches: self.inner.shared.floor_breaches.load(Ordering::Relaxed),
            failed: p.failed.map(|f| f.to_string()),
        }
    }

    /// Writes and syncs everything queued, stops the writer and releases
    /// the directory's lock (another bus may then open it). Later appends
    /// are counted as lost. Idempotent; blocks until the writer has exited.
    pub fn close(&self) {
        let _ = self.inner.tx.send(Msg::Close);
        self.inner.writer.unpark();
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
        self.writer.unpark();
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

/// How damage found in a log's segment is judged, alike by recovery at
/// open (which truncates a torn tail) and by every reader (for which it is
/// where the log ends): `Ok` with its offset and reason for a torn tail,
/// `Err` for corruption. Only the `last` segment can have a torn tail.
/// There, with a durable mark, damage at or past the synced length is a
/// torn tail and damage before it is corruption, whatever its shape;
/// without one (a log from before marks), its shape decides (see
/// [`segment`]). A misplaced whole frame is never a torn write.
fn judge_damage(damage: Damage, last: bool, synced: Option<u64>) -> Result<(u64, String), (u64, String)> {
    let (offset, reason, torn_shape) = match damage {
        Damage::TornTail { offset, reason } => (offset, reason, true),
        Damage::Corrupt { offset, reason } => (offset, reason, false),
        Damage::Misplaced { offset, reason } => return Err((offset, reason)),
    };
    match synced {
        _ if !last => Err((offset, reason)),
        None if torn_shape => Ok((offset, reason)),
        None => Err((offset, reason)),
        Some(synced) if offset < synced => Err((
            offset,
            format!("{reason}, inside the {synced} bytes recorded as synced (acknowledged events)"),
        )),
        Some(synced) => Ok((offset, format!("{reason}, past the {synced} bytes recorded as synced"))),
    }
}

/// A last segment `len` bytes long, shorter than the length its durable
/// mark vouches for, lost acknowledged events (files only grow: the writer
/// records the mark after syncing that much).
fn check_synced_len(path: &Path, len: u64, synced: Option<u64>) -> Result<(), LogError> {
    match synced {
        Some(synced) if len < synced => Err(LogError::Corrupt {
            path: path.to_owned(),
            offset: len,
            reason: format!(
                "the file ends at byte {len}, before the {synced} bytes recorded as synced: acknowledged events are missing"
            ),
        }),
        _ => Ok(()),
    }
}

/// The segments of the log in `dir` and its durable mark, checked against
/// each other. The mark is read first: a writer names a segment in it only
/// once the segment exists, so a listing made after holds every segment
/// the mark can name (one made before could miss one a writer started
/// meanwhile, and take it for removed).
///
/// # Errors
/// The directory's or the mark's I/O error; as [`check_mark_names_a_segment`].
fn segments_and_mark(dir: &Path) -> Result<(Vec<(u64, PathBuf)>, durable::Found), LogError> {
    let mark = durable::read(dir).map_err(io_err(&dir.join(durable::MARK_FILE)))?;
    let segments = list_segments(dir).map_err(io_err(dir))?;
    check_mark_names_a_segment(dir, &segments, mark)?;
    Ok((segments, mark))
}

/// The length `mark` vouches for in the last of `segments`, as
/// [`durable::Found::synced_len`] says.
fn synced_len_of_last(segments: &[(u64, PathBuf)], mark: durable::Found) -> Option<u64> {
    segments.last().and_then(|(first, _)| mark.synced_len(*first))
}

/// A mark naming a segment after the last one there is (or any, when there
/// is none) as synced past its header vouches for events that are gone:
/// the writer creates a segment and syncs its directory entry before a mark
/// names it, so only a removal takes it away. Corruption, like a last
/// segment cut below its mark: read as a shorter log, acknowledged events
/// would be missing without a word, and a writer would number new events
/// with their sequence numbers again.
fn check_mark_names_a_segment(dir: &Path, segments: &[(u64, PathBuf)], mark: durable::Found) -> Result<(), LogError> {
    let durable::Found::Mark(mark) = mark else {
        return Ok(());
    };
    let after_last = segments.last().is_none_or(|(first, _)| mark.first_seq > *first);
    if after_last && mark.synced_len > segment::MAGIC.len() as u64 {
        return Err(LogError::Corrupt {
            path: dir.join(segment::segment_name(mark.first_seq)),
            offset: 0,
            reason: format!(
                "the segment is missing, and the durable mark records {} bytes of it as synced: acknowledged events are missing",
                mark.synced_len
            ),
        });
    }
    Ok(())
}

/// Checks the last segment of a log being opened for writing; truncates a
/// torn tail. Returns the last sequence number in it (or the one before its
/// first, when it is empty), and its correlation index so far.
///
/// `synced` is the length the durable mark vouches for (`None`: no mark
/// file, a log from before marks). With it, damage at or past that length
/// is a torn tail whatever its shape (a power loss leaves any mix of new
/// and zero pages there, so valid frames after a zero page are dropped
/// too), and damage before it, or a file shorter than it, is corruption.
/// Without it, the shape decides (see [`segment`]); [`judge_damage`]
/// judges, as for every reader.
fn recover(path: &Path, first: u64, synced: Option<u64>) -> Result<(u64, CorrelationIndex), LogError> {
    let mut index = CorrelationIndex::default();
    // A sidecar of the active segment would go stale as it grows.
    let _ = std::fs::remove_file(index::index_path(path));
    let corrupt = |offset, reason| LogError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    let len = std::fs::metadata(path).map_err(io_err(path))?.len();
    check_synced_len(path, len, synced)?;
    let mut last = first.saturating_sub(1);
    let damage = match SegmentReader::open(path, first).map_err(io_err(path))? {
        Err(d) => Some(d),
        Ok(mut r) => loop {
            match r.next_frame(0).map_err(io_err(path))? {
                Ok(Some(frame)) => {
                    last = frame.seq;
                    if let Ok(record) = frame.raw()
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
    let (offset, reason) = match damage.map(|d| judge_damage(d, true, synced)) {
        None => return Ok((last, index)),
        Some(Err((offset, reason))) => return Err(corrupt(offset, reason)),
        Some(Ok(torn)) => torn,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
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

/// The lowest sequence number the log in `dir` may still hold: the first
/// number of its oldest segment (retention removes whole segments, oldest
/// first), from the file name alone. `None` when it has no segment.
///
/// # Errors
/// [`LogError::Io`] if the directory cannot be listed.
pub fn first_retained_seq(dir: impl AsRef<Path>) -> Result<Option<u64>, LogError> {
    let dir = dir.as_ref();
    let segments = list_segments(dir).map_err(io_err(dir))?;
    Ok(segments.first().map(|(first, _)| *first))
}

/// The sequence number of the last event in the log in `dir` (`None` when
/// it holds none), reading only its last non-empty segment: what replay
/// and `plugbus log tail` need to find the end, without checking the whole
/// log as [`LogStats::read`] does. A torn tail at the very end (a log being
/// written, or not yet recovered) is the end.
///
/// # Errors
/// [`LogError::Io`] if the directory or a segment cannot be read,
/// [`LogError::Corrupt`] naming the file if the segment read is damaged.
pub fn last_seq(dir: impl AsRef<Path>) -> Result<Option<u64>, LogError> {
    let dir = dir.as_ref();
    let (segments, mark) = segments_and_mark(dir)?;
    let synced = synced_len_of_last(&segments, mark);
    for (i, (first, path)) in segments.iter().enumerate().rev() {
        let is_last = i + 1 == segments.len();
        let corrupt = |offset, reason| LogError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        let mut reader = match SegmentReader::open(path, *first) {
            Ok(Ok(r)) => r,
            Ok(Err(damage)) => match judge_damage(damage, is_last, synced) {
                Ok(_) => continue,
                Err((offset, reason)) => return Err(corrupt(offset, reason)),
            },
            // Removed by retention since the listing: older ones are gone too.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        if is_last {
            check_synced_len(path, reader.file_len(), synced)?;
        }
        let mut found = None;
        loop {
            match reader.next_frame(0).map_err(io_err(path))? {
                Ok(Some(frame)) => found = Some(frame.seq),
                Ok(None) => break,
                Err(damage) => match judge_damage(damage, is_last, synced) {
                    Ok(_) => break,
                    Err((offset, reason)) => return Err(corrupt(offset, reason)),
                },
            }
        }
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
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
    /// Where an earlier reader stopped: used when its segment is opened.
    resume: Option<LogPosition>,
    /// What the durable mark vouches for in the last segment listed:
    /// damage in it is judged as recovery judges it ([`judge_damage`]).
    synced: Option<u64>,
    /// Where the reader found the log to end in a torn tail, if it did.
    torn_tail: Option<TornTail>,
}

/// Damage at the end of a log's last segment that recovery judges a torn
/// write (past what the durable mark vouches for): readers end the log
/// there, and the next writer to open the log cuts it off. What
/// [`LogStats`] reports, so that it is seen before it is cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Where the damage starts.
    pub offset: u64,
    /// Bytes from there to the end of the file (what a writer cuts off).
    pub bytes: u64,
    /// What is wrong there.
    pub reason: String,
}

/// Where a [`LogReader`] stopped: the segment it was reading and the byte
/// offset of its next frame. A reader opened later with
/// [`LogReader::resume`] starts there instead of walking the segment's
/// frames from its start, so a consumer that reads a growing log in
/// batches (catch-up) costs time linear in what it reads, not in its
/// position inside a 64 MiB segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPosition {
    /// First sequence number of the segment (its file name).
    segment: u64,
    /// Offset of the next frame in that segment.
    offset: u64,
    /// The lowest sequence number that frame may carry.
    next_seq: u64,
}

impl LogReader {
    /// A reader of `dir` starting at the first event with `seq >= from`.
    ///
    /// # Errors
    /// [`LogError::Io`] if the directory cannot be listed (a missing
    /// directory included); [`LogError::Corrupt`] if the durable mark names
    /// a synced segment that is gone.
    pub fn open(dir: impl AsRef<Path>, from: u64) -> Result<LogReader, LogError> {
        let dir = dir.as_ref();
        let (segments, mark) = segments_and_mark(dir)?;
        // Start at the last segment whose first seq is <= from.
        let next = segments.iter().rposition(|(first, _)| *first <= from).unwrap_or(0);
        let synced = synced_len_of_last(&segments, mark);
        Ok(LogReader {
            synced,
            segments,
            next,
            current: None,
            from,
            done: false,
            correlation: None,
            wanted: None,
            resume: None,
            torn_tail: None,
        })
    }

    /// Starts at `position` (from [`LogReader::position`] of an earlier
    /// reader of the same log) when it lies on the way to `from`: same
    /// segment, not past `from`. Otherwise (retention removed that segment,
    /// or `from` is elsewhere) it is ignored and the reader seeks as usual;
    /// the result is the same, only slower.
    #[must_use]
    pub fn resume(mut self, position: Option<LogPosition>) -> LogReader {
        self.resume = position.filter(|p| {
            p.next_seq <= self.from
                && self
                    .segments
                    .get(self.next)
                    .is_some_and(|(first, _)| *first == p.segment)
        });
        self
    }

    /// Where this reader stands: after the last record it returned (the
    /// next one it would read). `None` before it opened a segment.
    pub fn position(&self) -> Option<LogPosition> {
        let (path, reader, _) = self.current.as_ref()?;
        let segment = self.segments.iter().find(|(_, p)| p == path)?.0;
        let (offset, next_seq) = reader.position();
        Some(LogPosition {
            segment,
            offset,
            next_seq,
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
                let mut reader = match SegmentReader::open(&path, first) {
                    Ok(Ok(r)) => r,
                    Ok(Err(damage)) => match judge_damage(damage, last, self.synced) {
                        Ok((offset, reason)) => {
                            self.torn_tail = Some(TornTail::of(&path, offset, reason));
                            return Ok(None);
                        }
                        Err((offset, reason)) => return Err(LogError::Corrupt { path, offset, reason }),
                    },
                    // A segment removed by retention while we read: skip it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                };
                if last {
                    check_synced_len(&path, reader.file_len(), self.synced)?;
                }
                if let Some(at) = self.resume.take().filter(|p| p.segment == first) {
                    reader.resume_at(at.offset, at.next_seq).map_err(io_err(&path))?;
                }
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
                Err(damage) => {
                    return match judge_damage(damage, *last, self.synced) {
                        Ok((offset, reason)) => {
                            self.torn_tail = Some(TornTail::of(path, offset, reason));
                            Ok(None)
                        }
                        Err((offset, reason)) => Err(LogError::Corrupt {
                            path: path.clone(),
                            offset,
                            reason,
                        }),
                    };
                }
            }
        }
    }
}

impl TornTail {
    fn of(path: &Path, offset: u64, reason: String) -> TornTail {
        let len = std::fs::metadata(path).map_or(offset, |m| m.len());
        TornTail {
            path: path.to_owned(),
            offset,
            bytes: len.saturating_sub(offset),
            reason,
        }
    }
}

impl LogReader {
    /// Where this reader found the log to end in a torn tail, once it has
    /// read to the end (`None`: it ended cleanly, or has not got there).
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// The next event (with the correlation filter applied), its payload
    /// left as the logged text (see `Frame::raw`): what catch-up and replay
    /// read. [`Iterator::next`] gives the same records as [`Record`]s.
    pub(crate) fn next_event(&mut self) -> Option<Result<Event, LogError>> {
        self.next_parsed(
            |frame| frame.raw().map(segment::RawRecord::into_event),
            Event::correlation_id,
        )
    }

    /// The next frame parsed by `parse`, skipping those whose
    /// `correlation` is not the one asked for; after an error, nothing.
    fn next_parsed<T>(
        &mut self,
        parse: impl Fn(&segment::Frame) -> Result<T, serde_json::Error>,
        correlation: impl Fn(&T) -> Option<&str>,
    ) -> Option<Result<T, LogError>> {
        loop {
            if self.done {
                return None;
            }
            let item = match self.advance() {
                Ok(Some(frame)) => match parse(&frame) {
                    Ok(item) => Ok(item),
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
                Ok(item)
                    if self
                        .correlation
                        .as_deref()
                        .is_some_and(|c| correlation(&item) != Some(c)) =>
                {
                    continue;
                }
                Ok(item) => return Some(Ok(item)),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Iterator for LogReader {
    type Item = Result<Record, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_parsed(segment::Frame::record, |r| r.correlation_id.as_deref())
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
    /// that were delivered live but not logged (each loss is named by a
    /// `plugbus.log.overflow` event), or a segment file removed by hand.
    pub gaps: u64,
    /// A torn tail at the end of the last segment (the end of a write a
    /// crash or power loss cut short, never acknowledged): the next writer
    /// to open the log cuts it off.
    pub torn_tail: Option<TornTail>,
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
            torn_tail: None,
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
        stats.torn_tail = reader.torn_tail().cloned();
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

    /// Failpoints are process-wide: with them compiled in, every test that
    /// runs a log writer holds this (the `fail` crate's scenario lock), so
    /// one test's failpoint never fires in another's writer. The other unit
    /// tests of the crate run no log writer.
    #[cfg(feature = "failpoints")]
    fn serial() -> fail::FailScenario<'static> {
        fail::FailScenario::setup()
    }
    #[cfg(not(feature = "failpoints"))]
    fn serial() -> Serial {
        Serial
    }
    #[cfg(not(feature = "failpoints"))]
    struct Serial;

    /// A log in `dir` holding events 1 to `n`, synced and closed.
    async fn written_and_closed(dir: &Path, n: u64) {
        let log = EventLog::open(dir, options()).unwrap();
        append_n(&log, n).await;
        log.close();
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

    /// The writer sleeps when it has nothing to do and emitters do not wake
    /// it per event: an append to a sleeping writer must wake it, every
    /// time (a lost wake-up would leave the event unwritten until the next
    /// append). Each round waits until the writer sleeps, then appends one
    /// event and waits for it to be written (and synced, under `batched`).
    #[tokio::test]
    async fn an_append_wakes_a_sleeping_writer_every_time() {
        let _serial = serial();
        for durability in [Durability::Batched, Durability::Off] {
            let dir = tempfile::tempdir().unwrap();
            let log = EventLog::open(
                dir.path(),
                LogOptions {
                    durability,
                    ..LogOptions::default()
                },
            )
            .unwrap();
            for round in 0..200 {
                let asleep = async {
                    while !log.inner.shared.asleep.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), asleep)
                    .await
                    .unwrap_or_else(|_| panic!("{durability}: the writer never went to sleep (round {round})"));
                let (seq, queued) = log.append(&Event::new("e", json!({ "round": round })), round % 2 == 0);
                assert!(queued);
                let written = async {
                    log.wait_written(seq).await.unwrap();
                    if durability == Durability::Batched {
                        log.wait_durable(seq).await.unwrap();
                    }
                };
                tokio::time::timeout(Duration::from_secs(5), written)
                    .await
                    .unwrap_or_else(|_| panic!("{durability}: event {seq} never written: the writer slept on"));
            }
            log.close();
        }
    }

    /// Under `batched`, a caller waiting for its event to be durable gets
    /// the sync without waiting for the group-sync period (here an hour),
    /// while events nobody waits on stay unsynced until the period ends.
    #[tokio::test]
    async fn a_durable_waiter_gets_an_early_sync_and_plain_emits_wait_for_the_period() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(
            dir.path(),
            LogOptions {
                durability: Durability::Batched,
                sync_interval: Duration::from_secs(3_600),
                ..LogOptions::default()
            },
        )
        .unwrap();
        for round in 0..20 {
            let (plain, _) = log.append(&Event::new("plain", json!({ "round": round })), false);
            log.wait_written(plain).await.unwrap();
            assert!(
                log.status().durable_seq < plain,
                "round {round}: synced with nobody waiting"
            );
            let (seq, _) = log.append(&Event::new("durable", json!({ "round": round })), true);
            tokio::time::timeout(Duration::from_secs(30), log.wait_durable(seq))
                .await
                .unwrap_or_else(|_| panic!("round {round}: the durable waiter waited for the hour-long period"))
                .unwrap();
            assert!(log.status().durable_seq >= seq);
        }
        // Bookkeeping waits its turn: no early sync.
        let (seq, _) = log.append(&Event::new("snapshot position", json!({})), true);
        let in_turn = tokio::time::timeout(Duration::from_millis(300), log.wait_durable_in_turn(seq)).await;
        assert!(in_turn.is_err(), "synced early for a waiter in turn");
        log.close();
        assert!(log.status().durable_seq >= seq, "closing syncs everything");
    }

    #[tokio::test]
    async fn appends_are_numbered_durable_and_survive_reopening() {
        let _serial = serial();
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

    /// Catch-up reads a growing log in batches, each from where the last
    /// stopped: resuming gives the same records as seeking, across segment
    /// rolls and appends made between batches, and really starts at the
    /// position (damage before it in the segment is not walked over again).
    #[tokio::test]
    async fn a_reader_resumes_where_an_earlier_one_stopped() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: 4_000,
            ..options()
        };
        let log = EventLog::open(dir.path(), opts).unwrap();
        append_n(&log, 50).await;
        let (mut next, mut position, mut seen) = (1u64, None, Vec::new());
        for round in 0..40 {
            let mut reader = LogReader::open(dir.path(), next).unwrap().resume(position);
            for record in reader.by_ref().take(7) {
                let record = record.unwrap();
                seen.push(record.seq);
                next = record.seq + 1;
            }
            position = reader.position().or(position);
            if round % 3 == 0 {
                append_n(&log, 5).await;
            }
        }
        let total = log.last_seq();
        while let Some(record) = LogReader::open(dir.path(), next).unwrap().resume(position).next() {
            seen.push(record.unwrap().seq);
            next += 1;
        }
        assert_eq!(seen, (1..=total).collect::<Vec<_>>());
        log.close();
        drop(log);

        // Stop after the third frame of the first segment, then damage the
        // second frame's length: a seek from the start trips over it, a
        // resume does not.
        let mut reader = LogReader::open(dir.path(), 1).unwrap();
        for _ in 0..3 {
            reader.next().unwrap().unwrap();
        }
        let at = reader.position();
        let first = list_segments(dir.path()).unwrap()[0].1.clone();
        let mut bytes = std::fs::read(&first).unwrap();
        let second = segment::MAGIC.len()
            + segment::FRAME_PREFIX
            + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        bytes[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&first, bytes).unwrap();
        assert!(matches!(
            LogReader::open(dir.path(), 4).unwrap().next(),
            Some(Err(LogError::Corrupt { .. }))
        ));
        let resumed = LogReader::open(dir.path(), 4)
            .unwrap()
            .resume(at)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(resumed.seq, 4);
        // A position past `from` is not used: the reader seeks (and trips).
        assert!(matches!(
            LogReader::open(dir.path(), 2).unwrap().resume(at).next(),
            Some(Err(LogError::Corrupt { .. }))
        ));
    }

    #[tokio::test]
    async fn segments_roll_and_retention_removes_the_oldest() {
        let _serial = serial();
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

    /// A log path that is a file is refused saying so (it read "File exists").
    #[test]
    fn a_log_path_that_is_a_file_is_refused_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events");
        std::fs::write(&file, "x").unwrap();
        let err = EventLog::open(&file, options()).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("a file, not a directory") && err.contains("events"),
            "{err}"
        );
    }

    /// A segment named past any sequence a log reaches (a hand-made or
    /// damaged directory) is refused when the log opens, naming the file:
    /// before, the log took it as its tail and the next append overflowed.
    #[tokio::test]
    async fn a_segment_named_past_the_last_possible_sequence_is_refused_naming_it() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        written_and_closed(dir.path(), 3).await;
        let stray = dir.path().join("18446744073709551614.seg");
        std::fs::copy(dir.path().join(segment::segment_name(1)), &stray).unwrap();
        let err = EventLog::open(dir.path(), options()).unwrap_err();
        assert!(err.to_string().contains("18446744073709551614.seg"), "{err}");
        let read = LogReader::open(dir.path(), 1).map(|_| ()).unwrap_err();
        assert!(read.to_string().contains("18446744073709551614.seg"), "{read}");
    }

    #[tokio::test]
    async fn a_torn_tail_is_truncated_on_open_and_corruption_is_named() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        written_and_closed(dir.path(), 3).await;
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
        let _serial = serial();
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
        let _serial = serial();
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
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: 1_000,
            ..options()
        };
        // The two oldest segments aged by two hours.
        let segments = aged_segments(dir.path(), &opts, 3, 2).await;
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

    /// Appends 100 events to a new log in `dir` (at least `at_least`
    /// segments), closes it and makes its `aged` oldest segments two hours
    /// old; returns its segments.
    async fn aged_segments(dir: &Path, opts: &LogOptions, at_least: usize, aged: usize) -> Vec<(u64, PathBuf)> {
        let log = EventLog::open(dir, opts.clone()).unwrap();
        append_n(&log, 100).await;
        log.close();
        drop(log);
        let segments = segment_files(dir);
        assert!(segments.len() >= at_least, "{segments:?}");
        let old = SystemTime::now() - Duration::from_secs(7200);
        for (_, path) in &segments[..aged] {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        segments
    }

    /// The segment files of `dir`, oldest first.
    fn segment_files(dir: &Path) -> Vec<(u64, PathBuf)> {
        list_segments(dir).unwrap()
    }

    fn read_seqs(dir: &Path) -> Vec<u64> {
        LogReader::open(dir, 0).unwrap().map(|r| r.unwrap().seq).collect()
    }

    /// Appends frames for `seqs` to the segment `path` directly, as a
    /// writer would have before a crash, without syncing or marking them.
    fn append_unsynced(path: &Path, seqs: std::ops::RangeInclusive<u64>, pad: usize) {
        use std::io::Write;
        let mut buf = Vec::new();
        for seq in seqs {
            segment::encode(&mut buf, seq, &Event::new("late", json!({ "pad": "p".repeat(pad) }))).unwrap();
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(&buf)
            .unwrap();
    }

    #[tokio::test]
    async fn damage_past_the_synced_length_is_a_torn_tail_and_before_it_corruption() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        written_and_closed(dir.path(), 20).await;
        let seg = dir.path().join(segment::segment_name(1));
        let synced = std::fs::metadata(&seg).unwrap().len();
        // Unsynced frames 21..=60 (~20 KiB), then a power loss zeroes the
        // second page past the synced end; valid frames follow the zeros.
        append_unsynced(&seg, 21..=60, 400);
        let zero_at = (synced / 4096 + 2) * 4096;
        let mut bytes = std::fs::read(&seg).unwrap();
        assert!(bytes.len() as u64 > zero_at + 8192);
        bytes[zero_at as usize..zero_at as usize + 4096].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        // Readers of the log before it is reopened end where recovery will
        // cut it.
        let read_before = read_seqs(dir.path());
        // It opens: the zeros and everything after them are a torn tail.
        let log = EventLog::open(dir.path(), options()).unwrap();
        let last = log.last_seq();
        assert!(last > 20 && last < 60, "{last}");
        assert!(std::fs::metadata(&seg).unwrap().len() <= zero_at);
        log.close();
        drop(log);
        assert_eq!(read_seqs(dir.path()), (1..=last).collect::<Vec<_>>());
        assert_eq!(read_before, (1..=last).collect::<Vec<_>>());
        let synced = std::fs::metadata(&seg).unwrap().len();

        // Past the synced length, a damaged frame followed by good ones
        // (by shape alone, corruption) is a torn tail too, for readers as
        // for recovery: the log ends before it.
        append_unsynced(&seg, last + 1..=last + 3, 100);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[synced as usize + 20] ^= 0x01;
        std::fs::write(&seg, &bytes).unwrap();
        assert_eq!(read_seqs(dir.path()), (1..=last).collect::<Vec<_>>());
        assert_eq!(super::last_seq(dir.path()).unwrap(), Some(last));
        assert_eq!(LogStats::read(dir.path()).unwrap().last_seq, Some(last));
        std::fs::write(&seg, &bytes[..synced as usize]).unwrap();

        // A flipped bit in the last frame, which was synced: corruption,
        // named, not a torn tail to drop.
        let offsets: Vec<u64> = {
            let mut r = SegmentReader::open(&seg, 1).unwrap().unwrap();
            std::iter::from_fn(|| r.next_frame(0).unwrap().unwrap().map(|f| f.offset)).collect()
        };
        let last_frame = *offsets.last().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x01;
        std::fs::write(&seg, &bytes).unwrap();
        match EventLog::open(dir.path(), options()) {
            Err(LogError::Corrupt { path, offset, reason }) => {
                assert_eq!(path, seg);
                assert_eq!(offset, last_frame);
                assert!(reason.contains("synced"), "{reason}");
            }
            other => panic!("expected corruption of the last frame, got {other:?}"),
        }
        // Readers say so too, instead of ending one event early.
        assert_readers_refuse(dir.path(), &seg, "inside the");
        bytes[at] ^= 0x01;
        // A file shorter than what was synced: acknowledged events are gone.
        // Cut at a frame boundary, so only the mark tells.
        std::fs::write(&seg, &bytes[..last_frame as usize]).unwrap();
        let err = EventLog::open(dir.path(), options()).unwrap_err();
        assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("recorded as synced"), "{err}");
        assert_readers_refuse(dir.path(), &seg, "recorded as synced");
    }

    /// A last segment renamed by hand holds whole frames numbered below its
    /// name: no power loss writes those, so it is corruption, refused by
    /// recovery and readers alike, even where no byte is vouched for as
    /// synced (the mark names the old name). Recovery used to truncate it
    /// as a torn tail, deleting every acknowledged event in it.
    #[tokio::test]
    async fn a_renamed_last_segment_is_refused_not_truncated() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        written_and_closed(dir.path(), 20).await;
        let renamed = dir.path().join(segment::segment_name(5));
        std::fs::rename(dir.path().join(segment::segment_name(1)), &renamed).unwrap();
        let bytes = std::fs::metadata(&renamed).unwrap().len();
        let err = EventLog::open(dir.path(), options()).unwrap_err();
        assert!(
            matches!(&err, LogError::Corrupt { path, .. } if *path == renamed),
            "{err}"
        );
        assert!(
            err.to_string().contains("sequence 1 where 5 or more was expected"),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&renamed).unwrap().len(), bytes, "nothing truncated");
        assert_readers_refuse(dir.path(), &renamed, "sequence 1");
    }

    /// Bytes past the synced length that are no frame (a write a crash cut
    /// short) end the log for readers as for recovery, and `LogStats` says
    /// so, with where and how much, before a writer cuts them off.
    #[tokio::test]
    async fn stats_report_a_torn_tail_before_it_is_cut() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        written_and_closed(dir.path(), 5).await;
        let clean = LogStats::read(dir.path()).unwrap();
        assert_eq!((clean.events, clean.torn_tail.clone()), (5, None));
        let (_, seg) = list_segments(dir.path()).unwrap().pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        let mut file = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut file, &[0xAB; 26]).unwrap();
        let stats = LogStats::read(dir.path()).unwrap();
        assert_eq!(stats.events, 5);
        let torn = stats.torn_tail.expect("a torn tail");
        assert_eq!((torn.path, torn.offset, torn.bytes), (seg, len, 26), "{}", torn.reason);
    }

    /// `event::MAX_PAYLOAD_DEPTH` is what a frame holds and every reader
    /// reads back, the records' parse (`log show`, the dashboard) included:
    /// one level more was once taken from Python and made `log show` call
    /// the whole log corrupt.
    #[tokio::test]
    async fn a_payload_at_the_depth_limit_is_read_back_and_one_deeper_is_not() {
        let _serial = serial();
        let nested = |depth: usize| (0..depth).fold(json!(0), |inner, _| json!([inner]));
        let deepest = nested(crate::event::MAX_PAYLOAD_DEPTH);
        assert!(!crate::event::nested_deeper_than(
            &deepest,
            crate::event::MAX_PAYLOAD_DEPTH
        ));
        let deeper = nested(crate::event::MAX_PAYLOAD_DEPTH + 1);
        assert!(crate::event::nested_deeper_than(
            &deeper,
            crate::event::MAX_PAYLOAD_DEPTH
        ));
        for (payload, readable) in [(deepest, true), (deeper, false)] {
            let dir = tempfile::tempdir().unwrap();
            let log = EventLog::open(dir.path(), options()).unwrap();
            let last = log.append(&Event::new("deep", payload.clone()), true).0;
            log.wait_durable(last).await.unwrap();
            log.close();
            let read = LogReader::open(dir.path(), 0).unwrap().next().unwrap();
            assert_eq!(read.is_ok(), readable, "{read:?}");
            if let Ok(record) = read {
                assert_eq!(record.payload, payload);
            }
        }
    }

    /// A last segment removed (by hand, or a tool "cleaning up"), or the
    /// only one: the durable mark still names it as synced. Before, every
    /// reader took the log for a shorter one without a word, and a writer
    /// opening it numbered new events with the lost events' sequence
    /// numbers again.
    #[tokio::test]
    async fn a_removed_last_segment_is_refused_not_read_as_a_shorter_log() {
        let _serial = serial();
        let small = || LogOptions {
            segment_bytes: 512,
            ..options()
        };
        for only in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let log = EventLog::open(dir.path(), if only { options() } else { small() }).unwrap();
            append_n(&log, 40).await;
            log.close();
            let segments = list_segments(dir.path()).unwrap();
            assert_eq!(segments.len() == 1, only, "{segments:?}");
            let (_, last) = segments.last().unwrap().clone();
            std::fs::remove_file(&last).unwrap();
            let why = "the segment is missing";
            let err = EventLog::open(dir.path(), small()).map(|_| ()).unwrap_err();
            assert!(
                matches!(&err, LogError::Corrupt { path, reason, .. } if *path == last && reason.contains(why)),
                "{err}"
            );
            let errors = [
                LogReader::open(dir.path(), 0).map(|_| ()).unwrap_err(),
                super::last_seq(dir.path()).map(|_| ()).unwrap_err(),
                LogStats::read(dir.path()).map(|_| ()).unwrap_err(),
            ];
            for err in errors {
                assert!(
                    matches!(&err, LogError::Corrupt { path, reason, .. } if *path == last && reason.contains(why)),
                    "{err}"
                );
            }
            assert!(!last.exists(), "nothing recreated in its place");
        }
    }

    /// Every reader of the log in `dir` (records, its end, its stats)
    /// refuses it as corrupt, naming `seg` and `why`.
    fn assert_readers_refuse(dir: &Path, seg: &Path, why: &str) {
        let read: Result<Vec<Record>, LogError> = LogReader::open(dir, 0).unwrap().collect();
        let errors = [
            read.map(|_| ()).unwrap_err(),
            super::last_seq(dir).map(|_| ()).unwrap_err(),
            LogStats::read(dir).map(|_| ()).unwrap_err(),
        ];
        for err in errors {
            match &err {
                LogError::Corrupt { path, reason, .. } => {
                    assert_eq!(path, seg);
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("expected corruption, got {other:?}"),
            }
        }
    }

    /// One round of the power-loss model: acknowledged appends under
    /// `always`, then appends whose sync fails (the crash comes before it),
    /// then the segment and the mark rewritten as a power loss may leave
    /// them. The log must open and hold every acknowledged event, in order.
    #[cfg(feature = "failpoints")]
    async fn power_loss_round(seed: u64) {
        use crate::power_loss::{Rng, simulate};
        let mut rng = Rng::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: 16 << 10,
            ..options()
        };
        let log = EventLog::open(dir.path(), opts.clone()).unwrap();
        let mut acked = Vec::new();
        let event = |rng: &mut Rng| {
            let pad = "d".repeat(rng.below(3000) as usize);
            Event::new("e", json!({ "pad": pad }))
        };
        for _ in 0..1 + rng.below(5) {
            let mut last = 0;
            for _ in 0..1 + rng.below(20) {
                let ev = event(&mut rng);
                last = log.append(&ev, true).0;
                acked.push((last, ev.id().to_owned()));
            }
            log.wait_durable(last).await.unwrap();
        }
        let (_, active) = segment_files(dir.path()).pop().unwrap();
        let synced = std::fs::metadata(&active).unwrap().len();
        fail::cfg("log.sync.before", "return").unwrap();
        let mut last = 0;
        for _ in 0..1 + rng.below(30) {
            last = log.append(&event(&mut rng), true).0;
        }
        let _ = log.wait_written(last).await;
        assert!(log.status().failed.is_some(), "seed {seed}: the sync failed");
        fail::remove("log.sync.before");
        log.close();
        drop(log);
        assert_eq!(
            segment_files(dir.path()).pop().unwrap().1,
            active,
            "seed {seed}: no roll after a failed sync"
        );
        simulate(&active, synced, &mut rng).unwrap();
        // The mark is never synced after the log opens: it may be lost too.
        simulate(&dir.path().join(durable::MARK_FILE), 0, &mut rng).unwrap();
        let log = EventLog::open(dir.path(), opts)
            .unwrap_or_else(|e| panic!("seed {seed}: the log must open after a power loss: {e}"));
        let last_seq = log.last_seq();
        log.close();
        drop(log);
        let records: Vec<Record> = LogReader::open(dir.path(), 0)
            .unwrap()
            .map(|r| r.unwrap_or_else(|e| panic!("seed {seed}: {e}")))
            .collect();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs,
            (1..=last_seq).collect::<Vec<_>>(),
            "seed {seed}: in order, no hole"
        );
        for (seq, id) in &acked {
            let found = records.get(*seq as usize - 1).map(|r| r.id.as_str());
            assert_eq!(found, Some(id.as_str()), "seed {seed}: acknowledged event {seq} lost");
        }
    }

    /// A few hundred seeds in every run (~20 s in a debug build, most of it
    /// fsyncs); set
    /// `PLUGBUS_POWER_LOSS_SEEDS` for more.
    #[cfg(feature = "failpoints")]
    #[tokio::test]
    async fn a_power_loss_keeps_every_acknowledged_event_and_the_log_opens() {
        let _serial = serial();
        let seeds: u64 = std::env::var("PLUGBUS_POWER_LOSS_SEEDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(300);
        for seed in 0..seeds {
            power_loss_round(seed).await;
        }
    }

    #[cfg(feature = "failpoints")]
    #[tokio::test]
    #[ignore = "10,000 seeds: minutes; run with --ignored"]
    async fn a_power_loss_keeps_every_acknowledged_event_ten_thousand_seeds() {
        let _serial = serial();
        for seed in 0..10_000 {
            power_loss_round(1_000_000 + seed).await;
        }
    }

    /// Every failpoint of the write path stops the log: nothing after the
    /// failure is acknowledged, the writer never rolls past it, and what is
    /// in the files reads back whole, in order, after a reopen too.
    #[cfg(feature = "failpoints")]
    #[tokio::test]
    async fn a_failed_write_sync_or_roll_stops_the_log_without_rolling_or_advancing() {
        let _serial = serial();
        let points = [
            "log.write.before",
            "log.write.torn",
            "log.write.after",
            "log.sync.before",
            "log.sync.after",
            "log.roll",
            "log.dir_sync",
        ];
        for point in points {
            let dir = tempfile::tempdir().unwrap();
            // Batched: the frames sent together are encoded into one batch,
            // and the segment fills in its middle, so the failing write is
            // the one before a roll.
            let opts = LogOptions {
                durability: Durability::Batched,
                segment_bytes: 1_000,
                ..LogOptions::default()
            };
            let log = EventLog::open(dir.path(), opts.clone()).unwrap();
            append_n(&log, 10).await;
            fail::cfg(point, "return").unwrap();
            let seqs: Vec<u64> = (0..20)
                .map(|i| {
                    log.append(&Event::new("after", json!({ "i": i, "pad": "x".repeat(100) })), true)
                        .0
                })
                .collect();
            let mut first_failed = None;
            for seq in &seqs {
                match log.wait_durable(*seq).await {
                    Ok(()) => assert!(first_failed.is_none(), "{point}: {seq} acknowledged after a failure"),
                    Err(LogError::Failed(_)) => {
                        first_failed.get_or_insert(*seq);
                    }
                    Err(e) => panic!("{point}: {e}"),
                }
            }
            let first_failed = first_failed.unwrap_or_else(|| panic!("{point}: never fired"));
            let status = log.status();
            assert!(status.failed.is_some(), "{point}");
            assert!(status.durable_seq < first_failed, "{point}: {status:?}");
            // No segment started for an event after the failure.
            let segments = segment_files(dir.path());
            assert!(
                segments.iter().all(|(first, _)| *first <= first_failed),
                "{point}: rolled on after the failure: {segments:?}"
            );
            // The files hold exactly what was written: no hole, no half frame.
            assert_eq!(
                read_seqs(dir.path()),
                (1..=status.written_seq).collect::<Vec<_>>(),
                "{point}"
            );
            fail::remove(point);
            log.close();
            drop(log);
            let log = EventLog::open(dir.path(), opts).unwrap();
            assert_eq!(log.last_seq(), status.written_seq, "{point}");
            let seq = log.append(&Event::new("again", json!(null)), true).0;
            log.wait_durable(seq).await.unwrap();
            log.close();
            assert_eq!(read_seqs(dir.path()), (1..=seq).collect::<Vec<_>>(), "{point}");
        }
    }

    #[tokio::test]
    async fn an_event_too_large_for_a_frame_is_never_acknowledged() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), options()).unwrap();
        let big = Event::new("big", json!("x".repeat(MAX_FRAME)));
        match log.check_size(&big) {
            Err(LogError::TooLarge { bytes, limit }) => assert!(bytes > limit && limit == MAX_FRAME),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        log.check_size(&Event::new("small", json!(1))).unwrap();
        // A plain append of it: delivered live by the bus, not logged, counted.
        let (seq, _) = log.append(&big, false);
        let after = log.append(&Event::new("after", json!(null)), true).0;
        log.wait_durable(after).await.unwrap();
        log.close();
        let status = log.status();
        assert_eq!((status.lost, status.oversize), (1, 1));
        assert_eq!(read_seqs(dir.path()), [after]);
        let stats = LogStats::read(dir.path()).unwrap();
        assert_eq!((stats.events, stats.gaps), (1, 1), "seq {seq} is a gap");
    }

    #[tokio::test]
    async fn the_retention_floor_holds_back_age_and_the_size_limit_breaks_it_loudly() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            segment_bytes: 1_000,
            ..options()
        };
        // The four oldest segments aged by two hours.
        let segments = aged_segments(dir.path(), &opts, 5, 4).await;
        // A consumer still needs the events from the third segment's second one on.
        let floor = segments[2].0 + 1;
        let log = EventLog::open(
            dir.path(),
            LogOptions {
                retention_age: Some(Duration::from_secs(3600)),
                retention_floor: floor,
                ..opts.clone()
            },
        )
        .unwrap();
        let seq = log.append(&Event::new("after", json!(null)), true).0;
        log.wait_durable(seq).await.unwrap();
        log.close();
        assert_eq!(log.status().floor_breaches, 0);
        let left = segment_files(dir.path());
        assert_eq!(
            left[0].0, segments[2].0,
            "only the segments wholly below the floor went"
        );
        drop(log);
        // The size limit is a disk budget: it wins, and says so.
        let log = EventLog::open(
            dir.path(),
            LogOptions {
                retention_bytes: Some(1),
                ..opts
            },
        )
        .unwrap();
        log.set_retention_floor(floor);
        let mut last = 0;
        for _ in 0..30 {
            last = log
                .append(&Event::new("more", json!({ "pad": "y".repeat(50) })), true)
                .0;
        }
        log.wait_durable(last).await.unwrap();
        log.close();
        let status = log.status();
        assert_eq!(status.retention_floor, floor);
        assert!(status.floor_breaches >= 1, "{status:?}");
        assert!(segment_files(dir.path())[0].0 > floor);
    }

    #[tokio::test]
    async fn last_seq_reads_the_last_segment_only() {
        let _serial = serial();
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(last_seq(dir.path()).unwrap(), None);
        let opts = LogOptions {
            segment_bytes: 1_000,
            ..options()
        };
        let log = EventLog::open(dir.path(), opts).unwrap();
        append_n(&log, 50).await;
        log.close();
        drop(log);
        assert_eq!(last_seq(dir.path()).unwrap(), Some(50));
        // Damage in the first segment does not matter to it (it does to
        // LogStats, which checks everything)...
        let segments = segment_files(dir.path());
        let mut bytes = std::fs::read(&segments[0].1).unwrap();
        bytes[segment::MAGIC.len() + 30] ^= 0xff;
        std::fs::write(&segments[0].1, &bytes).unwrap();
        assert!(LogStats::read(dir.path()).is_err());
        assert_eq!(last_seq(dir.path()).unwrap(), Some(50));
        // ...and an empty last segment (just rolled) sends it to the one before.
        std::fs::write(dir.path().join(segment::segment_name(51)), segment::MAGIC).unwrap();
        assert_eq!(last_seq(dir.path()).unwrap(), Some(50));
    }

    #[test]
    fn durability_parses() {
        assert_eq!("always".parse::<Durability>(), Ok(Durability::Always));
        assert!("sometimes".parse::<Durability>().unwrap_err().contains("always"));
    }
}
