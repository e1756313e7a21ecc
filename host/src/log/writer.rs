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
//! After each successful sync, and before publishing it, it records the
//! synced length in the durable mark ([`super::durable`]).
//!
//! A failed write, sync or segment roll stops the log for good
//! ([`Progress::failed`]): nothing after it is written, `written` and
//! `durable` never move again, every waiter gets
//! [`LogError::Failed`](super::LogError::Failed), and the part of the
//! failed batch that reached the file is cut off again (best effort; a
//! reopen would truncate it as a torn tail anyway). Going on after a lost
//! batch would leave a gap, or half a frame, in the middle of the log.
//!
//! Failpoints (`crate::failpoint`), in order of a batch's life:
//! `log.write.before`, `log.write.torn` (writes half the batch, then fails),
//! `log.write.after`, `log.sync.before`, `log.sync.after`, `log.durable_mark`,
//! and on a segment roll `log.roll`, `log.dir_sync`, `log.index.rename`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::durable::{Mark, MarkFile};
use super::index::CorrelationIndex;
use super::segment::{self, MAGIC};
use super::{Durability, LogOptions};
use crate::event::Event;
use crate::failpoint;

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
/// Called with the log's first retained sequence number after retention
/// removed segments.
pub(crate) type RetainedHook = Box<dyn Fn(u64) + Send + Sync>;

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
    pub on_retained: OnceLock<RetainedHook>,
    /// Events delivered live but not logged because their frame would pass
    /// the reader's limit (also counted in `lost`).
    pub oversize: AtomicU64,
    /// The lowest sequence number a consumer still needs (0: none): see
    /// [`EventLog::set_retention_floor`](super::EventLog::set_retention_floor).
    pub retention_floor: AtomicU64,
    /// Positions held against retention like the floor, while their
    /// [`LogPin`](super::LogPin)s live: pin number → sequence number.
    pub pins: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    /// The next pin's number.
    pub next_pin: AtomicU64,
    /// Segments removed by the size limit although they held events at or
    /// above the retention floor.
    pub floor_breaches: AtomicU64,
    /// The writer sleeps with nothing to do: the next append must wake it
    /// (see [`Writer::next_message`]).
    pub asleep: AtomicBool,
    /// The highest sequence number a caller waits to see durable: its
    /// events are then written at once and, under `batched`, synced early
    /// ([`EARLY_SYNC_GAP`]).
    pub wanted: AtomicU64,
}

impl WriterShared {
    /// The retention floor in effect: the lowest of the floor set and the
    /// pins held (0: none).
    pub fn floor(&self) -> u64 {
        let set = self.retention_floor.load(Ordering::Acquire);
        let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        match (set, pins.values().min().copied().unwrap_or(0)) {
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        }
    }
}

/// Events queued at which an emitter wakes the writer whatever it is
/// doing: a sixteenth of the default buffer, so a burst faster than the
/// writer's own 1 ms polls never comes near filling it.
pub(crate) const WAKE_BACKLOG: usize = 4096;

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
/// Events taken off the channel before the writer goes on to write, sync and
/// publish its progress, even when more are waiting. Without a bound, a
/// sustained load (the channel never empty) kept durable waiters and
/// catch-up (`wait_written`) waiting until the load paused. 4,096 events
/// are under 10 ms of the writer's measured throughput, and a round trip
/// through the checks costs next to nothing next to them.
const MAX_ROUND_EVENTS: usize = 4096;
/// Under `batched` and `off`, encoded frames wait for more before one
/// `write`, until there are this many bytes…
const COALESCE_BYTES: usize = 256 << 10;
/// …or the oldest has waited this long. Without it a writer that keeps up
/// makes one `write` per event; 1 ms is a fifth of the group-sync period, so
/// durable acknowledgements are not delayed beyond it, and a reader of the
/// log (catch-up, `plugbus log tail`) sees an event at most 1 ms later.
const COALESCE_TIME: Duration = Duration::from_millis(1);
/// Under `batched`, the soonest after the last sync that a sync a durable
/// waiter asks for ([`WriterShared::wanted`]) is made (its events are
/// written at once, under `off` too). Without a waiter the
/// group sync waits for the whole `sync_interval` (5 ms by default): a
/// caller acknowledged only once durable (`POST /events`, an OTLP export)
/// waited 2.5 ms on average for a sync that costs ~0.2 ms. 1 ms keeps the
/// syncs to at most 1,000 a second under any load of durable emits, each
/// shared by every waiter that arrived since the last.
const EARLY_SYNC_GAP: Duration = Duration::from_millis(1);

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
    /// Frames encoded into `buf` (lost if its write fails).
    buf_frames: u64,
    /// The segment being appended to, and the first sequence number its
    /// name gives.
    active_path: PathBuf,
    active_first: u64,
    /// Where syncs are recorded; `None` once recording failed (the last
    /// mark stays a valid lower bound).
    mark: Option<MarkFile>,
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
        mark: Option<MarkFile>,
    ) -> Writer {
        let active_first = segment::parse_segment_name(&active_path).unwrap_or(written + 1);
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
            buf_frames: 0,
            active_path,
            active_first,
            mark,
            index,
        }
    }

    /// The thread body: runs until `Close` (or every sender is gone).
    pub fn run(mut self, rx: Receiver<Msg>) {
        self.apply_retention();
        let mut closing = false;
        while !closing {
            let first = self.next_message(&rx);
            let mut taken = 0usize;
            let mut round = 0usize;
            let mut next = first;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(seq, event) => {
                        taken += 1;
                        round += 1;
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
                if round >= MAX_ROUND_EVENTS {
                    // Under sustained load the channel is never empty: go
                    // write, sync and publish progress all the same.
                    break;
                }
                next = rx.try_recv().ok();
            }
            self.shared.queued.fetch_sub(taken, Ordering::AcqRel);
            let write_due = closing
                || self.options.durability == Durability::Always
                || self.sync_wanted()
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

    /// The next message, or `None` when a write or a sync is due first.
    ///
    /// Emitters do not wake this thread for each event: with work pending
    /// (frames to write, a sync to make) it polls on its own clock, at least
    /// every [`COALESCE_TIME`], which frames wait for anyway under `batched`
    /// and `off`; only when it has nothing to do does it sleep until an
    /// append wakes it (`asleep`). A wake-up per event cost the emitter a
    /// syscall and, on a busy machine, its core to the woken writer: emit
    /// p99 with the log on was 6× off. Under `always` every append wakes
    /// it, and otherwise each append that brings the queue to a multiple of
    /// [`WAKE_BACKLOG`] events.
    fn next_message(&self, rx: &Receiver<Msg>) -> Option<Msg> {
        loop {
            match rx.try_recv() {
                Ok(msg) => return Some(msg),
                Err(TryRecvError::Disconnected) => return Some(Msg::Close),
                Err(TryRecvError::Empty) => {}
            }
            match self.next_deadline() {
                Some(wait) if wait.is_zero() => return None,
                Some(wait) => std::thread::park_timeout(wait.min(COALESCE_TIME)),
                None => {
                    // Say so before looking once more: an append either is
                    // seen here or sees `asleep` (both sides fence).
                    self.shared.asleep.store(true, Ordering::SeqCst);
                    fence(Ordering::SeqCst);
                    match rx.try_recv() {
                        Ok(msg) => {
                            self.shared.asleep.store(false, Ordering::Relaxed);
                            return Some(msg);
                        }
                        Err(TryRecvError::Disconnected) => return Some(Msg::Close),
                        Err(TryRecvError::Empty) => std::thread::park(),
                    }
                    self.shared.asleep.store(false, Ordering::Relaxed);
                }
            }
        }
    }

    /// How long the thread may wait for the next message: until encoded
    /// frames must be written, or the group sync is due; `None`: no limit.
    fn next_deadline(&self) -> Option<Duration> {
        let wanted = self.sync_wanted();
        let write = self.unwritten_since.map(|t| match wanted {
            true => Duration::ZERO,
            false => COALESCE_TIME.saturating_sub(t.elapsed()),
        });
        // A stopped log has nothing left to sync.
        let unsynced = self.failed.is_none() && self.durable < self.written_pending;
        let sync = (unsynced && self.options.durability == Durability::Batched)
            .then(|| self.sync_period(wanted).saturating_sub(self.last_sync.elapsed()));
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
            if self.failed.is_some() {
                // Never roll past a lost batch.
                self.shared.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if let Err(e) = self.roll(seq) {
                self.fail(format!("cannot start a new segment in {}: {e}", self.dir.display()));
                self.shared.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if let Err(bytes) = segment::encode(&mut self.buf, seq, event) {
            // Only a plain emit gets here: durable ones are refused at
            // publish (`EventLog::check_size`). Its number becomes a gap.
            self.shared.lost.fetch_add(1, Ordering::Relaxed);
            let total = self.shared.oversize.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                dir = %self.dir.display(),
                seq,
                event = event.name(),
                bytes,
                limit = segment::MAX_FRAME,
                oversize_total = total,
                "event too large for the event log: delivered live but not logged"
            );
        } else {
            self.buf_frames += 1;
            if let Some(correlation) = event.correlation_id() {
                self.index.add(correlation, seq);
            }
        }
        self.written_pending = seq;
        self.unwritten_since.get_or_insert_with(Instant::now);
    }

    /// Writes the encoded batch with one `write`. On failure the log stops
    /// and the batch is lost (see the module docs).
    fn write_out(&mut self) {
        self.unwritten_since = None;
        if self.failed.is_some() {
            self.discard_batch();
            return;
        }
        if self.buf.is_empty() {
            // Only gaps (oversize events) since the last write.
            self.written = self.written_pending;
            if self.options.durability == Durability::Off {
                self.durable = self.written;
            }
            return;
        }
        match self.write_batch() {
            Ok(()) => {
                self.segment_bytes += self.buf.len() as u64;
                self.written = self.written_pending;
                if self.options.durability == Durability::Off {
                    self.durable = self.written;
                }
                self.buf_frames = 0;
                self.buf.clear();
            }
            Err(e) => {
                self.fail(format!("cannot write to the event log in {}: {e}", self.dir.display()));
                // Cut off whatever part of the batch reached the file, so
                // that readers of the live log never meet half a frame.
                if let Err(e) = self.file.set_len(self.segment_bytes) {
                    tracing::warn!(file = %self.active_path.display(), error = %e, "cannot cut the failed batch off the segment; it is truncated as a torn tail on reopening");
                }
                self.discard_batch();
            }
        }
    }

    fn write_batch(&mut self) -> std::io::Result<()> {
        failpoint::hit("log.write.before")?;
        if let Err(e) = failpoint::hit("log.write.torn") {
            // A write cut short: half the batch reaches the file.
            self.file.write_all(&self.buf[..self.buf.len() / 2])?;
            return Err(e);
        }
        self.file.write_all(&self.buf)?;
        failpoint::hit("log.write.after")
    }

    /// Drops the encoded batch after a failure, counting its events lost.
    fn discard_batch(&mut self) {
        self.shared.lost.fetch_add(self.buf_frames, Ordering::Relaxed);
        self.buf_frames = 0;
        self.buf.clear();
    }

    fn sync_file(&self) -> std::io::Result<()> {
        failpoint::hit("log.sync.before")?;
        self.file.sync_data()?;
        failpoint::hit("log.sync.after")
    }

    /// Records that the active segment is synced up to its current length;
    /// called after a successful sync, before the events are acknowledged.
    fn record_mark(&mut self) {
        let Some(file) = self.mark.as_mut() else { return };
        let mark = Mark {
            first_seq: self.active_first,
            synced_len: self.segment_bytes,
        };
        if let Err(e) = file.record(mark) {
            // The last mark recorded stays a valid lower bound: only
            // damage in what was synced since would pass for a torn tail.
            tracing::warn!(file = %file.path().display(), error = %e, "cannot record the durable mark; no longer recording it");
            self.mark = None;
        }
    }

    /// Whether a caller waits for events not yet durable: under `batched`
    /// they are then written at once and synced early, under `off` written
    /// at once (`always` does both anyway; a stopped log does neither).
    fn sync_wanted(&self) -> bool {
        self.options.durability != Durability::Always
            && self.failed.is_none()
            && self.shared.wanted.load(Ordering::Acquire) > self.durable
    }

    /// The time between two syncs under `batched`: the group-sync period,
    /// or [`EARLY_SYNC_GAP`] when a caller waits for one.
    fn sync_period(&self, wanted: bool) -> Duration {
        match wanted {
            true => EARLY_SYNC_GAP.min(self.options.sync_interval),
            false => self.options.sync_interval,
        }
    }

    /// Syncs per the policy and publishes progress.
    fn sync(&mut self, force: bool) {
        let due = match self.options.durability {
            Durability::Always => true,
            Durability::Batched => force || self.last_sync.elapsed() >= self.sync_period(self.sync_wanted()),
            Durability::Off => force,
        };
        if due {
            // A sync covers everything encoded so far.
            self.write_out();
        }
        if due && self.durable < self.written && self.failed.is_none() {
            match self.sync_file() {
                Ok(()) => {
                    self.durable = self.written;
                    self.last_sync = Instant::now();
                    self.record_mark();
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
        failpoint::hit("log.roll")?;
        if self.options.durability != Durability::Off {
            self.sync_file()?;
            self.durable = self.written;
        }
        let path = self.dir.join(segment::segment_name(first_seq));
        let file = create_segment(&path, &self.dir, self.options.durability)?;
        let old = std::mem::replace(&mut self.file, file);
        drop(old);
        let previous = std::mem::replace(&mut self.active_path, path);
        self.active_first = first_seq;
        if let Err(e) = self.index.seal(&previous) {
            // Only a speed-up is lost: readers scan that segment.
            tracing::warn!(file = %previous.display(), error = %e, "cannot write the correlation index");
        }
        self.sealed.push_back(Sealed {
            path: previous,
            bytes: self.segment_bytes,
        });
        self.segment_bytes = MAGIC.len() as u64;
        if self.options.durability != Durability::Off {
            // `create_segment` synced the new header.
            self.record_mark();
        }
        tracing::debug!(dir = %self.dir.display(), first_seq, "event log segment started");
        self.apply_retention();
        Ok(())
    }

    /// Deletes the oldest sealed segments past the size or age limit. The
    /// active segment is never deleted. A segment holding an event at or
    /// above the retention floor is kept against the age limit; the size
    /// limit (a disk budget) removes it anyway, loudly: a warning with its
    /// sequence range and [`LogStatus::floor_breaches`](super::LogStatus::floor_breaches).
    fn apply_retention(&mut self) {
        let now = SystemTime::now();
        let floor = self.shared.floor();
        // The first sequence number kept, once a segment was removed.
        let mut first_kept = None;
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
            // Its events run up to the one before the next segment's first.
            let first_seq = segment::parse_segment_name(&oldest.path).unwrap_or(0);
            let next_first = self
                .sealed
                .get(1)
                .and_then(|s| segment::parse_segment_name(&s.path))
                .unwrap_or(self.active_first);
            let last_seq = next_first.saturating_sub(1);
            let needed = floor > 0 && last_seq >= floor;
            if needed && !over_size {
                break;
            }
            match std::fs::remove_file(&oldest.path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(super::index::index_path(&oldest.path));
                    if needed {
                        let breaches = self.shared.floor_breaches.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(
                            file = %oldest.path.display(),
                            first_seq,
                            last_seq,
                            retention_floor = floor,
                            floor_breaches = breaches,
                            "event log segment removed by retention_bytes although a consumer still needs its events (retention floor)"
                        );
                    } else {
                        tracing::info!(file = %oldest.path.display(), bytes = oldest.bytes, first_seq, last_seq, "event log segment removed by retention");
                    }
                    self.sealed.pop_front();
                    first_kept = Some(next_first);
                }
                Err(e) => {
                    tracing::warn!(file = %oldest.path.display(), error = %e, "cannot remove an old event log segment");
                    break;
                }
            }
        }
        if let (Some(first), Some(hook)) = (first_kept, self.shared.on_retained.get()) {
            hook(first);
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
        failpoint::hit("log.dir_sync")?;
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
