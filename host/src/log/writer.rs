//! The log's writer thread: the one owner of the active segment file.
//!
//! The bus hands it events (already numbered, in publish order) through an
//! unbounded channel whose *budget* is enforced by the sender: a plain emit
//! that finds [`LogOptions::buffer_events`](super::LogOptions::buffer_events)
//! frames already waiting is not logged and is counted instead (the bus
//! still delivers it live). Durable emits bypass the budget: each has a
//! caller waiting on it, which bounds them.
//!
//! The thread takes whatever is waiting as one batch, encodes it into one
//! buffer and writes it with one `write`, then syncs according to the
//! [`Durability`] policy, and publishes how far the log is written and
//! durable on a `watch` channel that durable emits wait on (group commit).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::index::CorrelationIndex;
use super::segment::{self, MAGIC};
use super::{Durability, LogOptions};
use crate::event::Event;

/// Messages to the writer thread.
pub(crate) enum Msg {
    Append(u64, Event),
    /// Sync now (whatever the policy) and exit once everything before it is written.
    Close,
}

/// How far the log has got, as published to durable waiters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// Highest sequence number written to the file (page cache).
    pub written: u64,
    /// Highest sequence number durable under the policy.
    pub durable: u64,
    /// Set when a write failed: the log stopped; the reason.
    pub failed: Option<Arc<str>>,
    /// Set once the writer has exited.
    pub closed: bool,
}

/// Called with `(lost since the last call, first lost seq, last lost seq)`.
pub(crate) type OverflowHook = Box<dyn Fn(u64, u64, u64) + Send + Sync>;

/// State shared by the senders (the bus) and the writer thread.
pub(crate) struct WriterShared {
    /// Frames sent and not yet taken by the writer.
    pub queued: AtomicUsize,
    /// Events never logged because the buffer was full, or because the log
    /// had failed, since the log was opened.
    pub lost: AtomicU64,
    /// First and last sequence number lost since the last overflow report
    /// (0 when none); written under the bus's publish lock.
    pub lost_first: AtomicU64,
    pub lost_last: AtomicU64,
    pub progress: watch::Sender<Progress>,
    pub on_overflow: OnceLock<OverflowHook>,
}

/// The least time between two overflow reports: an overflowing log would
/// otherwise announce each batch.
const OVERFLOW_REPORT_EVERY: Duration = Duration::from_secs(1);
/// Most bytes encoded before one `write`: bounds the batch buffer while
/// keeping the syscall count low at high rates.
const MAX_BATCH_BYTES: usize = 4 << 20;
/// Frames taken off the channel between two updates of the emitters' buffer
/// count: one atomic per 256 events instead of per event keeps the
/// emitters' counter off this thread's cache line, while the room it gives
/// back is a rounding error of the 65,536-event buffer.
const RELEASE_EVERY: usize = 256;
/// Under `batched` and `off`, encoded frames wait for more before one
/// `write`, until there are this many bytes…
const COALESCE_BYTES: usize = 256 << 10;
/// …or the oldest has waited this long. Without it a writer that keeps up
/// makes one `write` per event; 1 ms is a fifth of the group-sync period, so
/// durable acknowledgements are not delayed beyond it, and a reader of the
/// log (catch-up, `plugbus log tail`) sees an event at most 1 ms later.
const COALESCE_TIME: Duration = Duration::from_millis(1);

/// A segment that is not written any more, kept for retention.
struct Sealed {
    path: PathBuf,
    bytes: u64,
}

pub(crate) struct Writer {
    pub dir: PathBuf,
    pub options: LogOptions,
    pub file: File,
    pub segment_bytes: u64,
    pub written: u64,
    pub shared: Arc<WriterShared>,
    sealed: VecDeque<Sealed>,
    buf: Vec<u8>,
    durable: u64,
    last_sync: Instant,
    last_overflow_report: Option<Instant>,
    /// `lost` at the last overflow report.
    reported_lost: u64,
    failed: Option<Arc<str>>,
    /// Highest sequence number encoded into `buf`, written or not.
    written_pending: u64,
    /// When the oldest frame not yet written was encoded.
    unwritten_since: Option<Instant>,
    /// The segment being appended to.
    active_path: PathBuf,
    /// Correlation ids of the active segment, sealed beside it when it rolls.
    index: CorrelationIndex,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: PathBuf,
        options: LogOptions,
        file: File,
        active_path: PathBuf,
        segment_bytes: u64,
        written: u64,
        sealed: Vec<(PathBuf, u64)>,
        shared: Arc<WriterShared>,
        index: CorrelationIndex,
    ) -> Writer {
        Writer {
            dir,
            options,
            file,
            segment_bytes,
            written,
            shared,
            sealed: sealed.into_iter().map(|(path, bytes)| Sealed { path, bytes }).collect(),
            buf: Vec::with_capacity(64 << 10),
            durable: written,
            last_sync: Instant::now(),
            last_overflow_report: None,
            reported_lost: 0,
            failed: None,
            written_pending: written,
            unwritten_since: None,
            active_path,
            index,
        }
    }

    /// The thread body: runs until `Close` (or every sender is gone).
    pub fn run(mut self, rx: Receiver<Msg>) {
        self.apply_retention();
        let mut closing = false;
        while !closing {
            let first = match self.next_deadline() {
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => Some(Msg::Close),
                },
                None => Some(rx.recv().unwrap_or(Msg::Close)),
            };
            let mut taken = 0usize;
            let mut next = first;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(seq, event) => {
                        taken += 1;
                        self.append(seq, &event);
                        if taken == RELEASE_EVERY {
                            // Under sustained load this loop does not end:
                            // give the buffer room back as it goes.
                            self.shared.queued.fetch_sub(taken, Ordering::AcqRel);
                            taken = 0;
                        }
                    }
                    Msg::Close => {
                        closing = true;
                        break;
                    }
                }
                if self.buf.len() >= MAX_BATCH_BYTES {
                    self.write_out();
                }
                next = rx.try_recv().ok();
            }
            self.shared.queued.fetch_sub(taken, Ordering::AcqRel);
            let write_due = closing
                || self.options.durability == Durability::Always
                || self.buf.len() >= COALESCE_BYTES
                || self.unwritten_since.is_some_and(|t| t.elapsed() >= COALESCE_TIME);
            if write_due {
                self.write_out();
            }
            self.sync(closing);
            self.report_overflow();
        }
        let mut p = self.shared.progress.borrow().clone();
        p.closed = true;
        self.shared.progress.send_replace(p);
        tracing::debug!(dir = %self.dir.display(), written = self.written, "event log closed");
    }

    /// How long the thread may wait for the next message: until encoded
    /// frames must be written, or the group sync is due; `None`: no limit.
    fn next_deadline(&self) -> Option<Duration> {
        let write = self.unwritten_since.map(|t| COALESCE_TIME.saturating_sub(t.elapsed()));
        let unsynced = self.durable < self.written_pending;
        let sync = (unsynced && self.options.durability == Durability::Batched)
            .then(|| self.options.sync_interval.saturating_sub(self.last_sync.elapsed()));
        match (write, sync) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn append(&mut self, seq: u64, event: &Event) {
        if self.failed.is_some() {
            self.shared.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let pending = self.segment_bytes + self.buf.len() as u64;
        if pending >= self.options.segment_bytes && pending > MAGIC.len() as u64 {
            self.write_out();
            if let Err(e) = self.roll(seq) {
                self.fail(format!("cannot start a new segment in {}: {e}", self.dir.display()));
                self.shared.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        segment::encode(&mut self.buf, seq, event);
        if let Some(correlation) = event.correlation_id() {
            self.index.add(correlation, seq);
        }
        self.written_pending = seq;
        self.unwritten_since.get_or_insert_with(Instant::now);
    }

    /// Writes the encoded batch with one `write`.
    fn write_out(&mut self) {
        self.unwritten_since = None;
        if self.buf.is_empty() {
            return;
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.segment_bytes += self.buf.len() as u64;
                self.written = self.written_pending;
                if self.options.durability == Durability::Off {
                    self.durable = self.written;
                }
            }
            Err(e) => self.fail(format!("cannot write to the event log in {}: {e}", self.dir.display())),
        }
        self.buf.clear();
    }

    /// Syncs per the policy and publishes progress.
    fn sync(&mut self, force: bool) {
        let due = match self.options.durability {
            Durability::Always => true,
            Durability::Batched => force || self.last_sync.elapsed() >= self.options.sync_interval,
            Durability::Off => force,
        };
        if due {
            // A sync covers everything encoded so far.
            self.write_out();
        }
        if due && self.durable < self.written && self.failed.is_none() {
            match self.file.sync_data() {
                Ok(()) => {
                    self.durable = self.written;
                    self.last_sync = Instant::now();
                }
                Err(e) => self.fail(format!("cannot sync the event log in {}: {e}", self.dir.display())),
            }
        } else if due {
            self.last_sync = Instant::now();
        }
        self.publish();
    }

    fn publish(&self) {
        let (written, durable, failed) = (self.written, self.durable, self.failed.clone());
        self.shared.progress.send_if_modified(|p| {
            let changed = p.written != written || p.durable != durable || p.failed.is_some() != failed.is_some();
            p.written = written;
            p.durable = durable;
            p.failed = failed;
            changed
        });
    }

    fn fail(&mut self, reason: String) {
        if self.failed.is_none() {
            tracing::error!(dir = %self.dir.display(), "{reason}; events are no longer logged");
            self.failed = Some(reason.into());
        }
    }

    /// Closes the active segment (synced unless durability is off) and
    /// starts one whose first record is `first_seq`.
    fn roll(&mut self, first_seq: u64) -> std::io::Result<()> {
        if self.options.durability != Durability::Off {
            self.file.sync_data()?;
            self.durable = self.written;
        }
        let path = self.dir.join(segment::segment_name(first_seq));
        let file = create_segment(&path, &self.dir, self.options.durability)?;
        let old = std::mem::replace(&mut self.file, file);
        drop(old);
        let previous = std::mem::replace(&mut self.active_path, path);
        if let Err(e) = self.index.seal(&previous) {
            // Only a speed-up is lost: readers scan that segment.
            tracing::warn!(file = %previous.display(), error = %e, "cannot write the correlation index");
        }
        self.sealed.push_back(Sealed {
            path: previous,
            bytes: self.segment_bytes,
        });
        self.segment_bytes = MAGIC.len() as u64;
        tracing::debug!(dir = %self.dir.display(), first_seq, "event log segment started");
        self.apply_retention();
        Ok(())
    }

    /// Deletes the oldest sealed segments past the size or age limit. The
    /// active segment is never deleted.
    fn apply_retention(&mut self) {
        let now = SystemTime::now();
        loop {
            let total: u64 = self.sealed.iter().map(|s| s.bytes).sum::<u64>() + self.segment_bytes;
            let Some(oldest) = self.sealed.front() else { break };
            let over_size = self.options.retention_bytes.is_some_and(|max| total > max);
            let over_age = self.options.retention_age.is_some_and(|age| {
                // A sealed segment's mtime is the time of its last write.
                std::fs::metadata(&oldest.path)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d > age))
            });
            if !(over_size || over_age) {
                break;
            }
            match std::fs::remove_file(&oldest.path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(super::index::index_path(&oldest.path));
                    tracing::info!(file = %oldest.path.display(), bytes = oldest.bytes, "event log segment removed by retention");
                    self.sealed.pop_front();
                }
                Err(e) => {
                    tracing::warn!(file = %oldest.path.display(), error = %e, "cannot remove an old event log segment");
                    break;
                }
            }
        }
    }

    fn report_overflow(&mut self) {
        if self.shared.lost_first.load(Ordering::Acquire) == 0 {
            return;
        }
        if self
            .last_overflow_report
            .is_some_and(|t| t.elapsed() < OVERFLOW_REPORT_EVERY)
        {
            return;
        }
        let first = self.shared.lost_first.swap(0, Ordering::AcqRel);
        let last = self.shared.lost_last.swap(0, Ordering::AcqRel);
        let total = self.shared.lost.load(Ordering::Relaxed);
        let lost = total - self.reported_lost;
        self.reported_lost = total;
        self.last_overflow_report = Some(Instant::now());
        tracing::warn!(dir = %self.dir.display(), lost, first_seq = first, last_seq = last, lost_total = total, "event log buffer full: events delivered live but not logged");
        if let Some(hook) = self.shared.on_overflow.get() {
            hook(lost, first, last);
        }
    }
}

/// Creates a segment file with its header, synced with its directory entry
/// unless durability is off.
pub(crate) fn create_segment(path: &Path, dir: &Path, durability: Durability) -> std::io::Result<File> {
    let mut file = std::fs::OpenOptions::new().create_new(true).append(true).open(path)?;
    file.write_all(&MAGIC)?;
    if durability != Durability::Off {
        file.sync_data()?;
        sync_dir(dir)?;
    }
    Ok(file)
}

/// Makes a new directory entry durable (Linux needs the directory synced).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
