//! A plugin's worker: the task that owns the plugin's `Store` and runs its
//! events one at a time, in queue order, and answers queries between two
//! events (ahead of queued events, from a queue of their own).
//!
//! After a hard failure the store is thrown away (wasmtime poisons a store
//! once a call traps) and a fresh instance is built from the `InstancePre`
//! before the next event, with its state brought back (see `recovery`):
//! the last snapshot restored and the events handled since replayed, the
//! failing event left out and kept as a dead letter. A guest `err` keeps the
//! instance and its state.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::json;

use tokio::sync::{mpsc, oneshot};

use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::event::Event;
use crate::outcome::{DropReason, Failure, Outcome};
use crate::plugin::ctx::Voice;
use crate::plugin::port::BusPort;
use crate::plugin::recovery::{Handoff, KeptState, Plan, Recovery, Snapshot};
use crate::plugin::{CallError, Instance, PluginSpec, PluginState};
use crate::query::{QueryAnswer, QueryError, QueryJob};
use crate::stats::StatsCell;

/// One queued event, with an optional channel for its outcome
/// ([`Bus::emit_and_wait`](crate::Bus::emit_and_wait)).
pub(crate) struct Job {
    pub event: Event,
    pub reply: Option<oneshot::Sender<Outcome>>,
}

/// What the worker takes next.
enum Next {
    Query(QueryJob),
    Job(Option<Job>),
}

/// Shared, read-mostly view of a worker's state: its lifecycle state, its
/// quarantine deadline (read by the emit path to drop events early), and the
/// shutdown "abandon" flag.
pub(crate) struct WorkerState {
    state: AtomicU8,
    /// While quarantined: when the next event may run (nanoseconds after
    /// `base`), 0 otherwise. Non-zero also during the probe itself.
    quarantined_until: AtomicU64,
    base: Instant,
    /// Set when the shutdown grace period ran out: drop the rest of the queue.
    abandon: AtomicBool,
    /// Set (and notified) when the worker task has ended, however it ended.
    finished: AtomicBool,
    finished_notify: tokio::sync::Notify,
    /// Events a full queue left in the log for the worker to read back.
    pub(crate) overflow: Overflow,
    /// Events the worker has settled, ever: their outcome counted
    /// (delivered or dropped), or, for a redriven letter already applied,
    /// deliberately not counted again. With the turn's, how many of an
    /// interrupted turn's events were.
    /// Written by the worker alone (its drop guard reads them on the same
    /// thread, or after the runtime handed the task over): plain loads and
    /// stores, no read-modify-write on the path of every event.
    settled: AtomicU64,
    /// The events the worker is handling now (a turn; 0: none): when the
    /// task ends in the middle of one (a panic in the host), its drop guard
    /// counts those not counted yet as dropped, and the turn's jobs as done.
    turn_events: AtomicU64,
    /// `settled` when the turn began.
    turn_settled_before: AtomicU64,
    /// The turn's events are jobs taken from the queue (each one job of the
    /// bus's `pending`), not events read back from the log (done with their
    /// range).
    turn_queued: AtomicBool,
    /// The lowest sequence number of an event the worker may still hand
    /// to its plugin again (a rebuild's replay, a batch run again, events
    /// read from the log and not handled yet); 0: none. The request
    /// journal keeps the plugin's records from there on (`bus::retention`).
    journal_floor: AtomicU64,
}

/// The worker's current turn, as its drop guard reads it.
#[derive(Debug, Clone, Copy)]
struct InHand {
    events: u64,
    settled_before: u64,
    queued: bool,
}

/// A plugin that falls behind on a bus with a log misses nothing: when its
/// queue is full, the event (and every event for it after that one, until
/// it has caught up) is left in the log instead of dropped, and the worker
/// reads them back from there once its queue is empty. The publisher never
/// waits for it. Only events published live take part (under the bus's
/// publish lock, so in sequence order): the queue then holds only events
/// older than the first one left in the log, and the worker, after them,
/// reads the log from that one on. It goes back to its queue under the
/// publish lock once it has read up to the last event left (see
/// `Worker::read_back_step`).
#[derive(Default)]
pub(crate) struct Overflow {
    /// The worker can read its events back from the bus's log.
    enabled: AtomicBool,
    /// A range is open (`range.first != 0`): read without the mutex by the
    /// publisher's fast path. Like the range, changed only under the bus's
    /// publish lock (but for the range's `handled`, the worker's own).
    active: AtomicBool,
    range: std::sync::Mutex<OverflowRange>,
    /// The log, to pin an open range's first event in it.
    log: std::sync::OnceLock<crate::log::EventLog>,
    /// Holds retention back from the open range's first event until the
    /// range closes: a plugin without snapshots (no floor of its own) would
    /// otherwise find the events it has yet to read removed by age.
    pin: std::sync::Mutex<Option<crate::log::LogPin>>,
    /// Signalled when a range opens. The worker may have emptied its queue
    /// and started waiting on it between the publisher finding the queue
    /// full and opening the range; no later event goes to the queue then,
    /// so only this wakes it to read them back (a stored permit: the wake
    /// is not lost if the worker is not waiting yet).
    opened: tokio::sync::Notify,
}

/// The events left in the log: sequence numbers `first..=last` (those the
/// plugin subscribes to), `count` of them; `first` is 0 when none is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct OverflowRange {
    first: u64,
    last: u64,
    count: u64,
    /// Of them, read back and handled (each counted by its outcome): the
    /// rest count as dropped if the range is let go of.
    handled: u64,
}

impl Overflow {
    /// Lets a full queue leave events in `log` (the bus's; the worker reads
    /// it).
    pub(crate) fn enable(&self, log: crate::log::EventLog) {
        let _ = self.log.set(log);
        self.enabled.store(true, Ordering::Release);
    }

    /// Whether the log writes `event` (one over its largest frame is
    /// delivered live but never written, so it cannot be read back). Asked
    /// only when a queue is full: nearly every event is settled by a bound
    /// that serialises nothing.
    fn log_can_hold(&self, event: &Event) -> bool {
        self.log.get().is_none_or(|log| log.check_size(event).is_ok())
    }

    fn pin(&self) -> std::sync::MutexGuard<'_, Option<crate::log::LogPin>> {
        self.pin.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn range(&self) -> std::sync::MutexGuard<'_, OverflowRange> {
        self.range.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Closes the range; under the publish lock. Returns what it held.
    fn close(&self) -> OverflowRange {
        let mut range = self.range();
        let held = *range;
        *range = OverflowRange::default();
        self.active.store(false, Ordering::Release);
        *self.pin() = None;
        held
    }
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState {
            state: AtomicU8::new(0),
            quarantined_until: AtomicU64::new(0),
            base: Instant::now(),
            abandon: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            finished_notify: tokio::sync::Notify::new(),
            overflow: Overflow::default(),
            settled: AtomicU64::new(0),
            turn_events: AtomicU64::new(0),
            turn_settled_before: AtomicU64::new(0),
            turn_queued: AtomicBool::new(false),
            journal_floor: AtomicU64::new(0),
        }
    }
}

/// Owns the worker's queue, and marks the worker finished when its task
/// ends, even by a panic. A task that ends normally has drained its queue
/// and its range. One that a panic (a bug in the host) ends in the middle
/// has events that nobody will handle: they are counted dropped (each
/// once: those of the turn it was in that were counted already are not)
/// and done, so that `flush` returns and no waiter hangs; and later events
/// for the plugin are refused (its queue is closed).
struct FinishGuard {
    state: Arc<WorkerState>,
    stats: Arc<StatsCell>,
    bus: Weak<dyn BusPort>,
    name: Arc<str>,
    rx: mpsc::Receiver<Job>,
    /// A job taken from the queue that did not fit the last batch.
    carry: Option<Job>,
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.state.set(PluginState::Unloaded);
        match self.bus.upgrade() {
            Some(bus) => self.give_up(&*bus),
            // A range left open holds retention back no more: nothing will
            // read it.
            None => *self.state.overflow.pin() = None,
        }
        self.state.finished.store(true, Ordering::Release);
        self.state.finished_notify.notify_waiters();
    }
}

impl FinishGuard {
    /// Closes the queue, and counts and lets go of every event the task
    /// ended before finishing: its turn's, its queue's and its range's
    /// (nothing, when it ended normally).
    fn give_up(&mut self, bus: &dyn BusPort) {
        let turn = self.state.in_hand();
        let mut queued: Vec<Job> = self.carry.take().into_iter().collect();
        let mut range = OverflowRange::default();
        let (rx, overflow) = (&mut self.rx, &self.state.overflow);
        // Under the publish lock: no live event joins the queue or the
        // range after they are emptied.
        bus.under_publish_lock(&mut || {
            rx.close();
            while let Ok(job) = rx.try_recv() {
                queued.push(job);
            }
            range = overflow.close();
        });
        // An offer outside the publish lock (NATS, a redrive) may hold a
        // send permit taken before the close, its job not in the queue
        // yet: the permits all come back once it lands (a `try_send`,
        // which never waits, is the only way in: microseconds). Bounded
        // all the same, this being a destructor.
        let deadline = Instant::now() + Duration::from_secs(1);
        while rx.capacity() < rx.max_capacity() && Instant::now() < deadline {
            match rx.try_recv() {
                Ok(job) => queued.push(job),
                Err(_) => std::thread::yield_now(),
            }
        }
        if turn.is_none() && queued.is_empty() && range.count == 0 {
            return;
        }
        // The turn's events whose outcome was not counted yet.
        let uncounted = turn.map_or(0, |turn| {
            let counted = self.state.settled.load(Ordering::Relaxed) - turn.settled_before;
            turn.events.saturating_sub(counted)
        });
        match turn {
            Some(turn) if turn.queued => {
                self.stats.dropped_many(uncounted);
                bus.jobs_done(turn.events);
            }
            // Counted handled as its step began.
            Some(_) => range.handled = range.handled.saturating_sub(uncounted),
            None => {}
        }
        tracing::error!(
            plugin = &*self.name,
            turn = uncounted,
            queued = queued.len(),
            left_in_log = range.count.saturating_sub(range.handled),
            "plugin worker stopped in the middle of its work (a bug in the host): its events not handled are dropped"
        );
        for job in queued {
            let outcome = count_drop(&self.stats, &self.name, &job.event, DropReason::Unloaded);
            if let Some(reply) = job.reply {
                let _ = reply.send(outcome);
            }
            bus.job_done();
        }
        finish_range(&self.stats, bus, range);
    }
}

impl WorkerState {
    pub fn get(&self) -> PluginState {
        if self.state.load(Ordering::Relaxed) != 2 && self.quarantined_until.load(Ordering::Relaxed) != 0 {
            return PluginState::Quarantined;
        }
        match self.state.load(Ordering::Relaxed) {
            0 => PluginState::Ready,
            1 => PluginState::Recovering,
            _ => PluginState::Unloaded,
        }
    }

    fn set(&self, s: PluginState) {
        let v = match s {
            PluginState::Ready | PluginState::Quarantined => 0,
            PluginState::Recovering => 1,
            PluginState::Unloaded => 2,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// True while events must be dropped: quarantined and the backoff has
    /// not passed yet.
    pub fn quarantined_now(&self) -> bool {
        let until = self.quarantined_until.load(Ordering::Acquire);
        until != 0 && self.now() < until
    }

    /// While quarantined: how long until the next event may run as a probe
    /// (zero once it is due). `None` when not quarantined.
    pub fn retry_in(&self) -> Option<Duration> {
        let until = self.quarantined_until.load(Ordering::Acquire);
        (until != 0).then(|| Duration::from_nanos(until.saturating_sub(self.now())))
    }

    fn in_quarantine(&self) -> bool {
        self.quarantined_until.load(Ordering::Acquire) != 0
    }

    fn quarantine(&self, backoff: Duration) {
        let until = self
            .now()
            .saturating_add(u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX))
            .max(1);
        self.quarantined_until.store(until, Ordering::Release);
    }

    fn release(&self) {
        self.quarantined_until.store(0, Ordering::Release);
    }

    fn abandoned(&self) -> bool {
        self.abandon.load(Ordering::Acquire)
    }

    /// The worker counted one event's outcome.
    fn settle(&self) {
        let settled = self.settled.load(Ordering::Relaxed);
        self.settled.store(settled + 1, Ordering::Relaxed);
    }

    /// The worker begins a turn of `events` (`queued`: jobs from its queue).
    fn begin_turn(&self, events: usize, queued: bool) {
        self.turn_settled_before
            .store(self.settled.load(Ordering::Relaxed), Ordering::Relaxed);
        self.turn_queued.store(queued, Ordering::Relaxed);
        self.turn_events.store(events as u64, Ordering::Relaxed);
    }

    /// The turn holds `events` now (jobs gathered behind its first; none
    /// of them counted yet).
    fn grow_turn(&self, events: usize) {
        self.turn_events.store(events as u64, Ordering::Relaxed);
    }

    /// The turn is over: its events are counted, its jobs done.
    fn end_turn(&self) {
        self.turn_events.store(0, Ordering::Relaxed);
    }

    /// The lowest sequence number of an event the worker may still hand to
    /// its plugin again, if any: the plugin's journaled requests from there
    /// on are kept. Set before such events are handled (records made after
    /// a compaction's scan are not in it; those made before were made
    /// under this floor), so a compaction reads it after its scan.
    pub(crate) fn journal_floor(&self) -> Option<u64> {
        match self.journal_floor.load(Ordering::Acquire) {
            0 => None,
            seq => Some(seq),
        }
    }

    /// Holds every journaled request of the plugin: a swapped-in version
    /// until it has taken its predecessor's state (and with it the events
    /// a rebuild would replay), which the predecessor held until then.
    pub(crate) fn hold_every_request(&self) {
        self.journal_floor.store(1, Ordering::Release);
    }

    /// The turn the worker is in, if any.
    fn in_hand(&self) -> Option<InHand> {
        let events = self.turn_events.load(Ordering::Relaxed);
        (events > 0).then(|| InHand {
            events,
            settled_before: self.turn_settled_before.load(Ordering::Relaxed),
            queued: self.turn_queued.load(Ordering::Relaxed),
        })
    }
}

/// Consecutive-failure counting and backoff: owned by the worker alone.
struct Breaker {
    consecutive: u32,
    backoff: Duration,
}

pub(crate) struct Worker {
    pub spec: Arc<PluginSpec>,
    pub instance: Option<Instance>,
    pub stats: Arc<StatsCell>,
    pub state: Arc<WorkerState>,
    pub bus: Weak<dyn BusPort>,
    breaker: Breaker,
    recovery: Recovery,
    dead_letters: Arc<DeadLetters>,
    /// Where snapshots are kept beside the log (and whether to sync them),
    /// when the bus has a log.
    snapshot_file: Option<(std::path::PathBuf, bool)>,
    /// A snapshot kept beside the log by a previous run, to restore first.
    resume: Option<Snapshot>,
    /// Highest sequence number among the events the plugin handled (a
    /// redriven dead letter is older than the position: it never moves it
    /// back).
    last_seq: Option<u64>,
    /// Where the worker leaves its state when it stops, for a successor.
    handoff: Arc<std::sync::Mutex<Option<Handoff>>>,
    /// The bus's log, when the plugin's state is kept beside it.
    log: Option<crate::log::EventLog>,
    /// The plugin's subscriptions, for reading its events from the log.
    patterns: Vec<crate::pattern::Pattern>,
    /// Ids of dead letters applied by a redrive (handled ok or err) whose
    /// letters are not removed yet: removed once the state that includes
    /// them is kept (see `commit_letters`).
    letters_applied: Vec<String>,
    /// Reading back the events a full queue left in the log, when it is.
    read_back: Option<ReadBack>,
}

/// Events a full queue left in the log handled per step of reading them
/// back: a query waits for at most this many (one batch's worth).
const READ_BACK_STEP: usize = 64;

/// How long one step waits for the log's writer to have written the events
/// to read back, before the worker looks at its queries and its shutdown.
const READ_BACK_WAIT: Duration = Duration::from_millis(100);

/// Reading back the events a full queue left in the log (see [`Overflow`]).
struct ReadBack {
    cursor: crate::plugin::catch_up::Cursor,
    /// The first event left, for the log lines.
    first: u64,
    /// Read up to here: the range's end when it was last looked at.
    upto: u64,
    /// Read from the log and not handled yet (the range counts those
    /// handled).
    events: VecDeque<Event>,
}

/// Redriven letters applied before their removal is committed, at most:
/// bounds the snapshot's list and the work a crash makes a redrive repeat.
const COMMIT_LETTERS_EVERY: usize = 256;

impl Worker {
    pub fn new(
        spec: Arc<PluginSpec>,
        instance: Instance,
        stats: Arc<StatsCell>,
        state: Arc<WorkerState>,
        bus: Weak<dyn BusPort>,
        dead_letters: Arc<DeadLetters>,
        kept: KeptState,
    ) -> Worker {
        let backoff = spec.limits.quarantine_backoff;
        stats.set_memory(instance.store.data().limiter.granted);
        let snapshot_file = kept.log.as_ref().map(|log| {
            (
                crate::plugin::recovery::snapshot_path(log.dir(), &spec.name),
                log.options().durability != crate::Durability::Off,
            )
        });
        Worker {
            spec,
            instance: Some(instance),
            stats,
            state,
            bus,
            breaker: Breaker {
                consecutive: 0,
                backoff,
            },
            recovery: Recovery::default(),
            dead_letters,
            snapshot_file,
            resume: kept.resume,
            last_seq: None,
            handoff: kept.handoff,
            log: kept.log,
            patterns: kept.patterns,
            letters_applied: Vec::new(),
            read_back: None,
        }
    }

    /// Runs until `stop` fires (then drains what is queued) or every sender
    /// is gone. With a `gate`, waits for it first: a hot-swapped version
    /// starts only once its predecessor has drained, so a plugin's events
    /// stay in order across the swap.
    pub async fn run(
        mut self,
        rx: mpsc::Receiver<Job>,
        mut queries: mpsc::Receiver<QueryJob>,
        mut stop: oneshot::Receiver<()>,
        gate: Option<oneshot::Receiver<Option<Handoff>>>,
        catch_up: Option<crate::plugin::catch_up::Plan>,
    ) {
        let mut guard = FinishGuard {
            state: self.state.clone(),
            stats: self.stats.clone(),
            bus: self.bus.clone(),
            name: self.spec.name.clone(),
            rx,
            carry: None,
        };
        // The queue, and a job taken from it that did not fit the last
        // batch: the guard holds them, to count them should the task end
        // before they are handled.
        let FinishGuard { rx, carry, .. } = &mut guard;
        let mut catch_up = catch_up;
        let mut resumed = false;
        if let Some(snapshot) = self.resume.take() {
            resumed = self.resume_from(snapshot).await;
            if !resumed && let Some(plan) = catch_up.as_mut() {
                // The snapshot is unusable: rebuild from the whole log instead.
                plan.cursor.rewind();
            }
        }
        if let Some(plan) = catch_up
            && let Err(e) = self.catch_up(plan, resumed).await
        {
            // A gap in what the plugin has seen: loud, never silent.
            let reason = format!(
                "catch-up from the event log stopped after seq {}: {e}; the plugin goes on with live events",
                self.last_seq.unwrap_or(0)
            );
            self.state_lost(&reason);
        }
        if let Some(gate) = gate {
            // An error only means the swap was abandoned: run anyway.
            if let Ok(Some(predecessor)) = gate.await {
                self.take_over(predecessor).await;
            }
        }
        let mut stopping = false;
        let state = self.state.clone();
        loop {
            // The events a full queue left in the log come once the queue is
            // empty (they are all newer than what it held), a step at a time,
            // so a query still waits for one step at most.
            if carry.is_none() && rx.is_empty() && self.state.overflow.pending() {
                match queries.try_recv() {
                    Ok(query) => {
                        let answer = if self.state.abandoned() {
                            Err(QueryError::ShuttingDown(self.spec.name.to_string()))
                        } else {
                            self.query(&query.request).await
                        };
                        let _ = query.reply.send(answer);
                    }
                    Err(_) => self.read_back_step().await,
                }
                continue;
            }
            // Queries go ahead of queued events: each runs between two
            // events (or batches), and a caller is not kept behind a full queue.
            let next = if let Some(job) = carry.take() {
                match queries.try_recv() {
                    Ok(query) => {
                        *carry = Some(job);
                        Next::Query(query)
                    }
                    Err(_) => Next::Job(Some(job)),
                }
            } else if stopping {
                tokio::select! {
                    biased;
                    Some(query) = queries.recv() => Next::Query(query),
                    job = rx.recv() => Next::Job(job),
                    // Events left in the log: read them back (loop top).
                    () = state.overflow.opened.notified() => continue,
                }
            } else {
                tokio::select! {
                    biased;
                    _ = &mut stop => {
                        // Refuse new events, keep those already queued.
                        rx.close();
                        stopping = true;
                        continue;
                    }
                    Some(query) = queries.recv() => Next::Query(query),
                    job = rx.recv() => Next::Job(job),
                    () = state.overflow.opened.notified() => continue,
                }
            };
            let job = match next {
                Next::Query(query) => {
                    let answer = if self.state.abandoned() {
                        Err(QueryError::ShuttingDown(self.spec.name.to_string()))
                    } else {
                        self.query(&query.request).await
                    };
                    let _ = query.reply.send(answer);
                    continue;
                }
                Next::Job(job) => job,
            };
            let Some(job) = job else { break };
            let busy = Instant::now();
            self.state.begin_turn(1, true);
            let (jobs, outcomes) = if self.state.abandoned() {
                let outcome = self.drop_job(&job, DropReason::Unloaded);
                (vec![job], vec![outcome])
            } else if self.state.quarantined_now() {
                let outcome = self.drop_job(&job, DropReason::Quarantined);
                (vec![job], vec![outcome])
            } else {
                let jobs = self.gather(job, rx, carry);
                self.state.grow_turn(jobs.len());
                self.hold_journal(jobs.iter().filter_map(|job| job.event.seq()).min());
                host_bug_point(jobs.iter().map(|job| &job.event));
                self.deliver(jobs).await
            };
            if self.letters_applied.len() >= COMMIT_LETTERS_EVERY
                || (!self.letters_applied.is_empty() && rx.is_empty() && carry.is_none())
            {
                self.commit_letters().await;
            }
            // What is left of the turn cannot fail: from here its jobs are
            // done by this loop, not by the drop guard.
            self.state.end_turn();
            self.hold_journal(None);
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                if let Some(reply) = job.reply {
                    let _ = reply.send(outcome);
                }
                if let Some(bus) = self.bus.upgrade() {
                    bus.job_done();
                }
            }
            self.stats.busy(busy.elapsed());
        }
        // Queries that arrive from here on are answered by their dropped
        // reply channel: the caller sees `ShuttingDown`.
        queries.close();
        while let Ok(query) = queries.try_recv() {
            let _ = query
                .reply
                .send(Err(QueryError::ShuttingDown(self.spec.name.to_string())));
        }
        // The queue is drained: keep the final state for the next run, and
        // for a hot-swapped successor.
        if self.recovery.handled_since_snapshot() > 0 {
            self.take_snapshot(self.last_seq).await;
        }
        if !self.letters_applied.is_empty() {
            self.commit_letters().await;
        }
        *self.handoff.lock().unwrap_or_else(|e| e.into_inner()) = Some(Handoff {
            recovery: std::mem::take(&mut self.recovery),
            last_seq: self.last_seq,
            letters_applied: std::mem::take(&mut self.letters_applied),
        });
        // `guard` marks the state unloaded when it drops, panics included.
        tracing::debug!(plugin = &*self.spec.name, "plugin worker stopped");
    }

    /// One step of reading back the events a full queue left in the log
    /// (see [`Overflow`]): handles up to [`READ_BACK_STEP`] of them, as the
    /// live events they are, in order; or reads on from the log; or, having
    /// read up to the last one left, goes back to the queue under the bus's
    /// publish lock (an event published after that is queued again; one left
    /// in the log meanwhile moves the end further, and reading goes on).
    /// Quarantined, or stopping past the grace period, it lets go of the
    /// rest: dropped as a quarantined plugin's events are, or read again at
    /// a restart (a plugin's snapshots are never past them).
    async fn read_back_step(&mut self) {
        if self.state.abandoned() {
            return self.let_go_of_overflow(
                "the shutdown's grace period is over; a restart reads them from the plugin's snapshot on",
            );
        }
        if self.state.quarantined_now() {
            return self.let_go_of_overflow("the plugin is quarantined: dropped, as its live events are");
        }
        let Some(log) = self.log.clone() else {
            return self.let_go_of_overflow("no log to read them from");
        };
        let mut reading = match self.read_back.take() {
            Some(reading) => reading,
            None => {
                let range = *self.state.overflow.range();
                ReadBack {
                    cursor: crate::plugin::catch_up::Cursor::new(
                        &log,
                        crate::manifest::CatchUp::All,
                        self.patterns.clone(),
                    )
                    .resuming_at(range.first),
                    first: range.first,
                    upto: range.last,
                    events: VecDeque::new(),
                }
            }
        };
        if reading.events.is_empty() {
            // Bounded, so that a shutdown is seen while the writer is behind.
            match tokio::time::timeout(READ_BACK_WAIT, log.wait_written(reading.upto)).await {
                Err(_) => {
                    self.read_back = Some(reading);
                    return;
                }
                Ok(Err(e)) => return self.read_back_failed(&format!("the log failed: {e}")),
                Ok(Ok(_)) => {}
            }
            let batch = match reading.cursor.read(reading.upto).await {
                Ok(batch) => batch,
                Err(e) => {
                    let why = format!("reading stopped after seq {}: {e}", reading.cursor.covered());
                    return self.read_back_failed(&why);
                }
            };
            self.announce_gap(reading.cursor.take_gap());
            // What is read is in memory now: the log need keep only the rest.
            if let Some(pin) = self.state.overflow.pin().as_ref() {
                pin.advance(reading.cursor.covered() + 1);
            }
            if batch.is_empty() {
                // Read up to `upto`: back to the queue, unless more were left.
                let Some(bus) = self.bus.upgrade() else {
                    return self.bus_gone();
                };
                let state = self.state.clone();
                let mut caught_up = None;
                bus.under_publish_lock(&mut || {
                    let last = state.overflow.range().last;
                    if last == reading.upto {
                        caught_up = Some(state.overflow.close());
                    } else {
                        reading.upto = last;
                    }
                });
                match caught_up {
                    Some(range) => {
                        // Booked before anything else: the range is closed.
                        // Any the log no longer had (the size limit breaks
                        // the pin, announced as a gap) were never handled.
                        finish_range(&self.stats, &*bus, range);
                        tracing::info!(
                            plugin = &*self.spec.name,
                            events = range.count,
                            from_seq = reading.first,
                            up_to_seq = reading.upto,
                            "caught up with the events its full queue left in the log; back to its queue"
                        );
                    }
                    None => self.read_back = Some(reading),
                }
                return;
            }
            reading.events.extend(batch);
        }
        // One batch a step (as the queue would give it): a quarantine that
        // begins in this step is seen before the next, and lets go of the
        // rest instead of running them on the quarantined plugin.
        let n = reading.events.len().min(READ_BACK_STEP).min(self.batch_limit().max(1));
        let step: Vec<Event> = reading.events.drain(..n).collect();
        self.state.overflow.range().handled += step.len() as u64;
        self.read_back = Some(reading);
        // Live events the plugin has never seen, delivered as the queue
        // would have: no dead-letter check (that is for history it has
        // seen), so every one of them is handled and counted; those after
        // a quarantine that begins in the batch are dropped (and counted).
        self.state.begin_turn(step.len(), false);
        host_bug_point(step.iter());
        self.handle_run(step, Voice::Live, true).await;
        self.state.end_turn();
    }

    /// The log could not give back the events a full queue left there: said
    /// loudly, the state kept (it is intact; it only misses those events),
    /// and the range let go.
    fn read_back_failed(&mut self, why: &str) {
        let reason = format!("the events its full queue left in the event log could not be read back: {why}");
        self.announce_state_lost(&reason, json!({}));
        self.let_go_of_overflow(&reason);
    }

    /// Stops reading back, whatever was read so far: nothing more is left
    /// in the log for this worker, and the events that were are done as far
    /// as `flush` goes (those not handled counted dropped).
    fn let_go_of_overflow(&mut self, why: &str) {
        self.read_back = None;
        let Some(bus) = self.bus.upgrade() else {
            return self.bus_gone();
        };
        let state = self.state.clone();
        let mut left = OverflowRange::default();
        bus.under_publish_lock(&mut || left = state.overflow.close());
        // Booked before anything else: the range is closed. Dropped, like
        // live events refused for the same reason: counted.
        finish_range(&self.stats, &*bus, left);
        tracing::warn!(
            plugin = &*self.spec.name,
            events = left.count.saturating_sub(left.handled),
            from_seq = left.first,
            up_to_seq = left.last,
            "events its full queue left in the event log not read back: {why}"
        );
    }

    /// The bus was dropped without a shutdown while a range was open:
    /// nobody publishes or waits on `flush` any more. The range is closed
    /// (its pin with it) so that the worker neither reads it back again
    /// from its start, as a fresh reading would, nor spins on it.
    fn bus_gone(&mut self) {
        self.read_back = None;
        self.state.overflow.close();
    }

    /// Holds the plugin's journaled requests from the oldest event a rebuild
    /// would replay, or from `from` (events about to be handled or read from
    /// the log) when older: see [`WorkerState::journal_floor`].
    fn hold_journal(&self, from: Option<u64>) {
        let floor = match (self.recovery.oldest_seq(), from) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
        self.state.journal_floor.store(floor, Ordering::Release);
    }

    /// The next logged events of `cursor`, up to `upto`, their journaled
    /// requests held first (the plugin may have seen them before a
    /// restart); a retention gap met on the way is announced.
    async fn read_history(
        &mut self,
        cursor: &mut crate::plugin::catch_up::Cursor,
        upto: u64,
    ) -> Result<Vec<Event>, crate::LogError> {
        self.hold_journal(Some(cursor.covered() + 1));
        let batch = cursor.read(upto).await?;
        self.announce_gap(cursor.take_gap());
        Ok(batch)
    }

    /// Delivers the jobs gathered for one turn, in order, and returns them
    /// with their outcomes, pairwise. A redriven letter already applied (its
    /// removal waits for a snapshot that holds it) is answered `Ok` without
    /// running again: once is enough.
    async fn deliver(&mut self, mut jobs: Vec<Job>) -> (Vec<Job>, Vec<Outcome>) {
        let repeated: Vec<Job> = if self.letters_applied.is_empty() {
            Vec::new()
        } else {
            jobs.extract_if(.., |job| self.letters_applied.iter().any(|id| id == job.event.id()))
                .collect()
        };
        // Settled for the turn before the rest run (counted when they were
        // applied; a host panic below must not count them dropped).
        for _ in &repeated {
            self.state.settle();
        }
        let mut outcomes = match &jobs[..] {
            [] => Vec::new(),
            [job] => vec![self.run_one(&job.event, Voice::Live).await],
            _ => {
                let events: Vec<Event> = jobs.iter().map(|job| job.event.clone()).collect();
                self.run_batch(&events, Voice::Live, true).await
            }
        };
        for job in &repeated {
            tracing::info!(
                plugin = &*self.spec.name,
                event = job.event.name(),
                event_id = job.event.id(),
                "redriven letter already applied, its removal pending: not applied again"
            );
            outcomes.push(Outcome::Ok);
        }
        jobs.extend(repeated);
        (jobs, outcomes)
    }

    /// A hot-swapped version starts from its predecessor's state: the
    /// predecessor's last snapshot (persisted beside the log, when there is
    /// one, as it stopped) restored, if this version's `restore` accepts it,
    /// and the events it handled since replayed, as after a trap. When that
    /// fails and the bus has a log, the state is rebuilt from the log, up to
    /// the last event the predecessor handled; otherwise it is lost, loudly.
    async fn take_over(&mut self, predecessor: Handoff) {
        self.recovery = predecessor.recovery;
        self.hold_journal(None);
        self.last_seq = predecessor.last_seq;
        self.letters_applied = predecessor.letters_applied;
        let Some(mut instance) = self.instance.take() else {
            return;
        };
        match self.bring_back(&mut instance).await {
            Ok(Ok(replayed)) => {
                tracing::info!(
                    plugin = &*self.spec.name,
                    replayed,
                    "new version started from the previous version's state"
                );
                self.stats.add_replayed(replayed as u64);
                self.instance = Some(instance);
            }
            Ok(Err((reason, _))) => {
                self.instance = Some(instance);
                let upto = self.last_seq.unwrap_or(0);
                match self.log.clone() {
                    Some(log) if upto > 0 => {
                        tracing::warn!(plugin = &*self.spec.name, %reason, upto, "rebuilding the new version's state from the event log");
                        self.recovery.reset();
                        if let Err(e) = self.rebuild_from_log(log, upto).await {
                            self.state_lost(&format!("{reason}; rebuilding from the event log failed: {e}"));
                        }
                    }
                    _ => self.state_lost(&reason),
                }
            }
            // No instance at all: the next event builds one.
            Err(_) => {}
        }
    }

    /// Handles every logged event this plugin subscribes to, up to `upto`,
    /// on a fresh instance (emits and logs silenced).
    async fn rebuild_from_log(&mut self, log: crate::log::EventLog, upto: u64) -> Result<(), crate::LogError> {
        let spec = self.spec.clone();
        self.instance = Some(
            spec.instantiate()
                .await
                .map_err(|e| crate::LogError::Failed(e.failure.to_string().into()))?,
        );
        let mut cursor =
            crate::plugin::catch_up::Cursor::new(&log, crate::manifest::CatchUp::All, self.patterns.clone());
        let last = self.last_seq;
        loop {
            let batch = self.read_history(&mut cursor, upto).await?;
            if batch.is_empty() {
                break;
            }
            self.handle_history(&batch, u64::MAX).await;
        }
        self.last_seq = last.max(self.last_seq);
        Ok(())
    }

    /// Handles the logged history (see `catch_up`): phase 1, then tells the
    /// bus it may register the plugin, waits for the cut, and reads on to it.
    async fn catch_up(&mut self, plan: crate::plugin::catch_up::Plan, resumed: bool) -> Result<(), crate::LogError> {
        let crate::plugin::catch_up::Plan {
            log,
            mut cursor,
            ready,
            cut,
            initial_snapshot,
            live_from,
        } = plan;
        let live_from = live_from.unwrap_or(u64::MAX);
        // Events accepted while the bus started are new to this plugin,
        // whatever their age: no `since:` window skips them.
        cursor.windowless_from(live_from);
        let started = Instant::now();
        let mut handled = 0u64;
        if let Some(at) = initial_snapshot {
            // The plugin's starting point, kept before anything is queued
            // for it: every event after it reaches the plugin, from the log
            // or live, whatever crash follows.
            let start = at.unwrap_or_else(|| log.last_seq());
            cursor.move_to(start + 1);
            if self.take_snapshot(Some(start)).await {
                self.hold_position(start);
            }
        }
        if resumed {
            // The kept snapshot needs every event after it, with no `since:`
            // window, even one at position 0 (before any event: it reads
            // back as no position, so the bus did not resume the cursor).
            cursor = cursor.resuming_at(0);
            if let Some(first) = self.report_retention_gap(&log, self.last_seq.unwrap_or(0)).await {
                cursor.gaps_known_before(first);
            }
        }
        // A `since:` window bounds this first catch-up only: what it read is
        // kept as a snapshot before the plugin is registered, as a new
        // plugin's initial state is (above). Without it, a crash before the
        // first periodic snapshot restarted the plugin windowed again, and
        // the events it had handled live, older than the window by then,
        // were never applied again.
        // (A resumed cursor reads windowless already.)
        let keep_window = cursor.windowed() && self.spec.has_state();
        loop {
            let batch = self.read_history(&mut cursor, log.status().written_seq).await?;
            if batch.is_empty() {
                break;
            }
            handled += self.handle_history(&batch, live_from).await;
        }
        if keep_window {
            let at = cursor.covered();
            // Even when the window's last event trapped.
            self.restore_instance().await;
            if self.take_snapshot(Some(at)).await {
                self.hold_position(at);
            } else {
                tracing::error!(
                    plugin = &*self.spec.name,
                    up_to_seq = at,
                    "the state a `since:` catch-up built could not be kept as a snapshot: a crash before the next \
                     snapshot would apply the window again"
                );
            }
        }
        // The window bounds the first read only: from here on the log is read
        // as live delivery goes, every event whatever its time (one stamped
        // old, a CloudEvent's own `time` or a redriven letter's follow-up, is
        // applied now, as after a crash the snapshot's resumption would).
        cursor = cursor.resuming_at(0);
        let _ = ready.send(());
        // An error means the install was abandoned (shutdown): stop here.
        let Ok(cut) = cut.await else { return Ok(()) };
        log.wait_written(cut).await?;
        loop {
            let batch = self.read_history(&mut cursor, cut).await?;
            if batch.is_empty() {
                break;
            }
            handled += self.handle_history(&batch, live_from).await;
        }
        tracing::info!(
            plugin = &*self.spec.name,
            events = handled,
            up_to_seq = cut,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "caught up with the event log"
        );
        Ok(())
    }

    /// Says so, loudly, when the events after `seq` (the kept snapshot's
    /// position) are no longer all in the log: retention removed some. The
    /// state the snapshot holds is kept: it only misses those events.
    /// Returns the log's first retained sequence number, when there is one.
    async fn report_retention_gap(&mut self, log: &crate::log::EventLog, seq: u64) -> Option<u64> {
        let dir = log.dir().to_owned();
        let first = tokio::task::spawn_blocking(move || crate::log::first_retained_seq(&dir)).await;
        let Ok(Ok(Some(first))) = first else { return None };
        if first > seq + 1 {
            self.announce_gap(Some((seq + 1, first - 1)));
        }
        Some(first)
    }

    /// Announces events `from..=to` removed by the log's retention before
    /// this plugin handled them (at the start of a catch-up, or while it
    /// ran): `plugbus.plugin.state_lost` with the range. The state is kept:
    /// it only misses those events.
    fn announce_gap(&mut self, gap: Option<(u64, u64)>) {
        let Some((from, to)) = gap else { return };
        tracing::error!(
            plugin = &*self.spec.name,
            from_seq = from,
            to_seq = to,
            "events the plugin needs were removed by retention: its state misses them"
        );
        let reason =
            format!("events {from}..={to} were removed by the log's retention before this plugin handled them");
        self.announce_state_lost(&reason, json!({ "from_seq": from, "to_seq": to }));
    }

    /// Handles logged events, emits and logs silenced; returns how many.
    /// An event that is a live dead letter is skipped: it is applied only by
    /// a redrive, which removes its letter.
    /// Events numbered `live_from` or later were accepted while the bus
    /// started and this plugin never saw them: they run as live ones (their
    /// follow-ups and logs are new), the others quietly.
    /// Consecutive events that are not letters and share a voice go to the
    /// plugin in batches, as queued ones do.
    async fn handle_history(&mut self, events: &[Event], live_from: u64) -> u64 {
        let voice = |event: &Event| Voice::quiet_if(event.seq().is_none_or(|seq| seq < live_from));
        let mut handled = 0;
        let mut run: Vec<Event> = Vec::new();
        for event in events {
            let letter = self.dead_letters.contains(event.id());
            if letter {
                tracing::debug!(plugin = &*self.spec.name, event = event.name(), seq = ?event.seq(), "a dead-lettered event is left to redrive");
            }
            if let Some(first) = run.first()
                && (letter || voice(first) != voice(event))
            {
                let run_voice = voice(first);
                handled += self.handle_run(std::mem::take(&mut run), run_voice, false).await;
            }
            if !letter {
                run.push(event.clone());
            }
        }
        match run.first() {
            Some(first) => {
                let run_voice = voice(first);
                handled + self.handle_run(run, run_voice, false).await
            }
            None => handled,
        }
    }

    /// Handles `run` (events of one voice) in batches; returns how many.
    /// `queued`: they take the place of queued events (read back from the
    /// log), so a batch's events after a quarantine or the end of the grace
    /// period are dropped as the queue's would be; history runs whole.
    async fn handle_run(&mut self, run: Vec<Event>, voice: Voice, queued: bool) -> u64 {
        // Held until the next turn or read: the rest of a catch-up's chunk
        // is in memory meanwhile.
        self.hold_journal(run.iter().filter_map(Event::seq).min());
        let mut rest = &run[..];
        while !rest.is_empty() {
            let n = batch_len(rest, self.batch_limit(), self.spec.limits.batch_bytes);
            let (batch, tail) = rest.split_at(n);
            // A one-event batch too: `run_batch` drops a queued event as the
            // queue would once the plugin is quarantined or abandoned.
            self.run_batch(batch, voice, queued).await;
            rest = tail;
        }
        self.stats.add_replayed(run.len() as u64);
        run.len() as u64
    }

    /// Most events the next batch may take: `max_batch`, and for a plugin
    /// with `state` no more than until its next snapshot is due.
    fn batch_limit(&self) -> usize {
        let max = self.spec.max_batch();
        if self.spec.has_state() {
            max.min(self.recovery.until_snapshot(&self.spec.limits))
        } else {
            max
        }
    }

    /// Takes `first` and the jobs queued behind it into one batch: as many
    /// as are already waiting, up to the plugin's `max_batch` and
    /// `batch_bytes`, never waiting for more. A job that would pass the byte
    /// bound is left in `carry` for the next batch.
    fn gather(&self, first: Job, rx: &mut mpsc::Receiver<Job>, carry: &mut Option<Job>) -> Vec<Job> {
        let max = self.batch_limit();
        if max <= 1 || rx.is_empty() {
            return vec![first];
        }
        let budget = self.spec.limits.batch_bytes;
        let mut bytes = payload_bytes(&first.event);
        let mut jobs = vec![first];
        while jobs.len() < max {
            let Ok(job) = rx.try_recv() else { break };
            bytes += payload_bytes(&job.event);
            if bytes > budget {
                *carry = Some(job);
                break;
            }
            jobs.push(job);
        }
        jobs
    }

    /// Runs `events` in `on-events` calls. When a call succeeds, each event
    /// gets its own outcome, counters and latency, and the follow-ups are
    /// published in emit order. When it fails (a trap, a broken answer),
    /// nothing of it counted: the state is rebuilt as after any trap and
    /// the events run again, so only the event that fails is a dead letter
    /// and every other is applied once:
    /// - the events the call finished, before the one it failed on, run
    ///   again as a batch (they are not the poison; their log lines were
    ///   written, so they write none now);
    /// - the one it failed on fails at once when it failed on its own
    ///   budgets (a dead letter, as unbatched), else runs alone;
    /// - the rest run as a batch, which may fail on a later poison event
    ///   the same way.
    ///
    /// Each part is shorter than the failed call, so this ends, and a
    /// stream with a few poison events stays batched between them. A call
    /// that failed after every event finished (an answer that breaks the
    /// contract) is followed by one call per event. When a failure dropped
    /// the instance it is rebuilt first; when there can be no instance, the
    /// first event fails, as it would unbatched. A loop over the parts, not
    /// recursion: a runaway plugin splits every batch into 64 parts.
    async fn run_batch(&mut self, events: &[Event], voice: Voice, queued: bool) -> Vec<Outcome> {
        let spec = self.spec.clone();
        let mut outcomes = Vec::with_capacity(events.len());
        let mut steps = VecDeque::from([Step::Batch(0..events.len(), voice)]);
        while let Some(step) = steps.pop_front() {
            let stopped = queued && (self.state.abandoned() || self.state.quarantined_now());
            let (range, voice) = match step {
                Step::Each(range, voice, hushed) => {
                    outcomes.extend(self.run_each(&events[range], voice, hushed, queued).await);
                    continue;
                }
                Step::Poison(at, mark, e) if !stopped => {
                    let event = &events[at];
                    tracing::debug!(
                        plugin = &*spec.name,
                        event = event.name(),
                        "the batch's poison event fails without running again"
                    );
                    // The state holds exactly the events before it.
                    let outcome = self.letter_and_finish(event, e.failure, mark.fuel, &e.frames).await;
                    self.stats.observe(mark.elapsed);
                    self.update_breaker(&outcome);
                    outcomes.push(outcome);
                    continue;
                }
                Step::Poison(at, ..) => {
                    outcomes.extend(self.run_each(&events[at..=at], voice, 0, queued).await);
                    continue;
                }
                Step::Batch(range, voice) if range.len() < 2 || stopped => {
                    let hushed = if voice == Voice::Hushed { range.len() } else { 0 };
                    outcomes.extend(self.run_each(&events[range], voice, hushed, queued).await);
                    continue;
                }
                Step::Batch(range, voice) => (range, voice),
            };
            let part = &events[range.clone()];
            let mut instance = match self.instance.take() {
                Some(instance) => instance,
                None => match self.rebuild().await {
                    Ok(instance) => instance,
                    Err(e) => {
                        // As `handle` does: the first event fails like a
                        // trap (a dead letter, never skipped).
                        self.state.set(PluginState::Recovering);
                        self.stats.set_memory(0);
                        self.recovery.needs_rebuild = true;
                        let outcome = self.letter_and_finish(&part[0], e.failure, 0, &e.frames).await;
                        self.update_breaker(&outcome);
                        outcomes.push(outcome);
                        steps.push_front(Step::Batch(range.start + 1..range.end, voice));
                        continue;
                    }
                },
            };
            let run = spec.on_events(&mut instance, part, voice).await;
            let answers = match run.result {
                Ok(answers) => answers,
                Err(e) => {
                    // The store is poisoned: drop it; the next call
                    // rebuilds the state from before this part.
                    self.state.set(PluginState::Recovering);
                    self.stats.set_memory(0);
                    self.recovery.needs_rebuild = true;
                    let finished = run.marks.len();
                    tracing::warn!(
                        plugin = &*spec.name,
                        events = part.len(),
                        finished,
                        failure = e.failure.kind(),
                        "a batch failed: {}; its events run again",
                        e.failure
                    );
                    if finished >= part.len() {
                        steps.push_front(Step::Each(range, voice, part.len()));
                        continue;
                    }
                    let at = range.start + finished;
                    let hushed = if voice == Voice::Live { Voice::Hushed } else { voice };
                    // A failure inside an event the plugin began, on that
                    // event's own budgets, is what a call of its own would
                    // have met: that event is the poison. Not so for the
                    // memory cap (the batch's copy of every event counts
                    // against it) or the host's refusals: run it again.
                    let failed = match (run.failed_in, &e.failure) {
                        (_, Failure::MemoryLimit | Failure::Host(_)) | (None, _) => Step::Each(at..at + 1, voice, 0),
                        (Some((_, mark)), _) => Step::Poison(at, mark, e),
                    };
                    steps.push_front(Step::Batch(at + 1..range.end, voice));
                    steps.push_front(failed);
                    steps.push_front(Step::Batch(range.start..at, hushed));
                    continue;
                }
            };
            self.state.set(PluginState::Ready);
            self.stats.set_memory(instance.store.data().limiter.granted);
            self.stats.batch(part.len());
            self.instance = Some(instance);
            spec.publish_held(run.held, voice);
            for (i, (event, answer)) in part.iter().zip(answers).enumerate() {
                let outcome = match answer {
                    Ok(()) => Outcome::Ok,
                    Err(message) => Outcome::Error(message),
                };
                let mark = run.marks.get(i).copied().unwrap_or_default();
                self.applied(event);
                self.stats.observe(mark.elapsed);
                self.update_breaker(&outcome);
                self.finish(event, &outcome, mark.fuel, &[]);
                outcomes.push(outcome);
            }
            self.maybe_snapshot().await;
        }
        outcomes
    }

    /// Runs `events` one call each; the first `hushed` write no log lines
    /// (a failed batch wrote them). Queued events (`queued`) are dropped
    /// instead once the plugin is quarantined or abandoned, as the queue's
    /// next events would be.
    async fn run_each(&mut self, events: &[Event], voice: Voice, hushed: usize, queued: bool) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let dropped = if !queued {
                None
            } else if self.state.abandoned() {
                Some(DropReason::Unloaded)
            } else if self.state.quarantined_now() {
                Some(DropReason::Quarantined)
            } else {
                None
            };
            if let Some(reason) = dropped {
                outcomes.push(count_drop(&self.stats, &self.spec.name, event, reason));
                self.state.settle();
                continue;
            }
            let voice = if voice == Voice::Live && i < hushed {
                Voice::Hushed
            } else {
                voice
            };
            outcomes.push(self.run_one(event, voice).await);
        }
        outcomes
    }

    /// Runs one event, timed, its outcome fed to the breaker.
    async fn run_one(&mut self, event: &Event, voice: Voice) -> Outcome {
        let started = Instant::now();
        let outcome = self.handle(event, voice).await;
        self.stats.observe(started.elapsed());
        self.update_breaker(&outcome);
        outcome
    }

    /// Answers one query from the state after the events handled so far,
    /// rebuilding the instance first if a failure dropped it. A query that
    /// fails hard drops the instance like a failed event (its state comes
    /// back before the next call) but leaves no dead letter and does not
    /// count toward quarantine: no event failed.
    async fn query(&mut self, request: &str) -> Result<QueryAnswer, QueryError> {
        let spec = self.spec.clone();
        let name = &*spec.name;
        if !spec.has_query() {
            return Err(QueryError::NoQueryExport(name.to_owned()));
        }
        let mut instance = match self.instance.take() {
            Some(instance) => instance,
            None => match self.rebuild().await {
                Ok(instance) => instance,
                Err(e) => return Err(QueryError::failed(name, e.failure)),
            },
        };
        let started = Instant::now();
        match spec.query(&mut instance, request).await {
            Ok(answer) => {
                self.stats.queried(false);
                self.instance = Some(instance);
                tracing::debug!(
                    plugin = name,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    ok = answer.is_ok(),
                    "query answered"
                );
                match answer {
                    Ok(text) => crate::query::answer(name, self.last_seq, text),
                    Err(message) => Err(QueryError::Plugin {
                        plugin: name.to_owned(),
                        message,
                    }),
                }
            }
            Err(e) => {
                self.stats.queried(true);
                self.state.set(PluginState::Recovering);
                self.stats.set_memory(0);
                self.recovery.needs_rebuild = true;
                tracing::error!(
                    plugin = name,
                    failure = e.failure.kind(),
                    backtrace = ?e.frames,
                    "plugin failed answering a query: {}; it is rebuilt with its state",
                    e.failure
                );
                Err(QueryError::failed(name, e.failure))
            }
        }
    }

    fn drop_job(&self, job: &Job, reason: DropReason) -> Outcome {
        self.state.settle();
        count_drop(&self.stats, &self.spec.name, &job.event, reason)
    }

    /// Counts consecutive hard failures; quarantines the plugin past the
    /// limit (or when the probe after a quarantine fails, with a doubled
    /// backoff); releases it after a success.
    fn update_breaker(&mut self, outcome: &Outcome) {
        let limits = &self.spec.limits;
        let name = &*self.spec.name;
        match outcome {
            Outcome::Failed(failure) => {
                self.breaker.consecutive = self.breaker.consecutive.saturating_add(1);
                let probe_failed = self.state.in_quarantine();
                if limits.quarantine_after == 0
                    || !(probe_failed || self.breaker.consecutive >= limits.quarantine_after)
                {
                    return;
                }
                if probe_failed {
                    self.breaker.backoff = (self.breaker.backoff * 2).min(limits.quarantine_backoff_max);
                }
                let backoff = self.breaker.backoff;
                self.state.quarantine(backoff);
                tracing::warn!(
                    plugin = name,
                    failure = failure.kind(),
                    consecutive = self.breaker.consecutive,
                    retry_in_ms = backoff.as_millis() as u64,
                    "plugin quarantined"
                );
                self.meta(
                    "plugbus.plugin.quarantined",
                    json!({
                        "name": name,
                        "failure": failure.kind(),
                        "count": self.breaker.consecutive,
                        "retry_in_ms": backoff.as_millis() as u64,
                    }),
                );
            }
            Outcome::Ok | Outcome::Error(_) => {
                if self.state.in_quarantine() {
                    self.state.release();
                    tracing::info!(
                        plugin = name,
                        after_failures = self.breaker.consecutive,
                        "plugin recovered from quarantine"
                    );
                    self.meta(
                        "plugbus.plugin.recovered",
                        json!({ "name": name, "after_failures": self.breaker.consecutive }),
                    );
                }
                self.breaker.consecutive = 0;
                self.breaker.backoff = limits.quarantine_backoff;
            }
            Outcome::Dropped(_) => {}
        }
    }

    fn meta(&self, name: &str, payload: serde_json::Value) {
        if let Some(bus) = self.bus.upgrade() {
            bus.publish(Event::new(name, payload));
        }
    }

    /// Runs one event (`voice`: silent for a logged one being caught up on,
    /// its emits and logs dropped), rebuilding the instance first if needed.
    async fn handle(&mut self, event: &Event, voice: Voice) -> Outcome {
        let spec = self.spec.clone();
        let instance = match self.instance.take() {
            Some(instance) => Ok(instance),
            None => self.rebuild().await,
        };
        // An instance that cannot be built (instantiation failed, or ran
        // past its deadline on a starved machine) fails this event like a
        // trap would: it becomes a dead letter, never silently skipped
        // (found by the long model checker, seed 1140).
        let ran = match instance {
            Ok(mut instance) => {
                let (result, fuel) = spec.on_event(&mut instance, event, voice).await;
                match result {
                    Ok(Ok(())) => Ok((Outcome::Ok, fuel, instance)),
                    Ok(Err(msg)) => Ok((Outcome::Error(msg), fuel, instance)),
                    Err(e) => Err((e.failure, e.frames, fuel)),
                }
            }
            Err(e) => Err((e.failure, e.frames, 0)),
        };
        match ran {
            Err((failure, frames, fuel)) => {
                // The store is poisoned (or was never built): drop it; the
                // next event gets a fresh instance with the state rebuilt,
                // without this event.
                self.state.set(PluginState::Recovering);
                self.stats.set_memory(0);
                self.recovery.needs_rebuild = true;
                self.letter_and_finish(event, failure, fuel, &frames).await
            }
            Ok((outcome, fuel, instance)) => {
                self.state.set(PluginState::Ready);
                self.stats.set_memory(instance.store.data().limiter.granted);
                self.applied(event);
                self.instance = Some(instance);
                self.maybe_snapshot().await;
                self.finish(event, &outcome, fuel, &[]);
                outcome
            }
        }
    }

    /// Books an event that failed the plugin hard: its dead letter, counters
    /// and report. Keyed by event: a letter met again (a redrive that fails
    /// again, a redelivery) stays one letter. With a log, a letter is kept
    /// only for an event the log holds durably: one for an event a crash
    /// took back would name an event that never happened (and a redrive
    /// would apply it).
    async fn letter_and_finish(&mut self, event: &Event, failure: Failure, fuel: u64, frames: &[String]) -> Outcome {
        let name = self.spec.name.clone();
        if !self.dead_letters.contains(event.id())
            && Self::durable_in_log(&name, self.log.clone(), event).await
            && self.dead_letters.add(DeadLetter::new(&name, event, &failure))
        {
            self.stats.dead_lettered();
        }
        let outcome = Outcome::Failed(failure);
        self.finish(event, &outcome, fuel, frames);
        outcome
    }

    /// Moves the position to `seq` if that is further, never backwards: a
    /// redriven letter is older than the position, and one older than a
    /// starting snapshot kept at `seq` is applied with the position left
    /// there (a later snapshot never claims an earlier one).
    fn hold_position(&mut self, seq: u64) {
        self.last_seq = Some(self.last_seq.map_or(seq, |last| last.max(seq)));
    }

    /// Brings the state back (snapshot + the events since) when the last
    /// event trapped and left no instance, so that a snapshot can hold it.
    async fn restore_instance(&mut self) {
        if self.instance.is_none()
            && let Ok(instance) = self.rebuild().await
        {
            self.instance = Some(instance);
        }
    }

    /// Books an event the plugin handled (ok or err): kept for replay after
    /// a trap, its position, and whether it was a redriven letter.
    fn applied(&mut self, event: &Event) {
        self.recovery.handled(event, &self.spec.limits);
        if let Some(seq) = event.seq() {
            self.hold_position(seq);
        }
        if self.dead_letters.contains(event.id()) && !self.letters_applied.iter().any(|id| id == event.id()) {
            self.letters_applied.push(event.id().to_owned());
        }
    }

    /// Restores the snapshot a previous run (or the version this one
    /// replaces) kept beside the log; the catch-up that follows reads the log
    /// from just after it. Returns false when the snapshot was refused.
    async fn resume_from(&mut self, snapshot: Snapshot) -> bool {
        let spec = self.spec.clone();
        let Some(instance) = self.instance.as_mut() else {
            return false;
        };
        let reason = match spec.restore(instance, &snapshot.bytes).await {
            Ok(Ok(())) => {
                tracing::info!(plugin = &*spec.name, seq = ?snapshot.seq, bytes = snapshot.bytes.len(), "state restored from the snapshot kept with the log");
                if let Some(bus) = self.bus.upgrade() {
                    bus.snapshot_kept(&spec.name, Some(snapshot.seq.unwrap_or(0)));
                }
                self.last_seq = snapshot.seq;
                self.recovery.snapshotted(snapshot);
                return true;
            }
            Ok(Err(reason)) => format!("restore refused the kept snapshot: {reason}"),
            Err(e) => {
                // That call poisoned the instance: start from a fresh one.
                match spec.instantiate().await {
                    Ok(fresh) => self.instance = Some(fresh),
                    Err(_) => self.instance = None,
                }
                format!("restore of the kept snapshot failed: {}", e.failure)
            }
        };
        tracing::warn!(plugin = &*spec.name, %reason, "rebuilding the plugin's state from the whole event log instead");
        false
    }

    /// Takes a snapshot of a plugin with `state` when one is due. A snapshot
    /// that traps poisons the instance like any trap: it is dropped and
    /// rebuilt (the events since the last good snapshot are still kept).
    async fn maybe_snapshot(&mut self) {
        if self.recovery.snapshot_due(&self.spec.limits) {
            self.take_snapshot(self.last_seq).await;
        }
    }

    /// Removes the letters a redrive applied, once the state that includes
    /// them is kept: for a plugin with `state` and a log, after a snapshot
    /// listing them is persisted (a crash before that leaves the letters and
    /// a state without them; one after it, a snapshot whose list removes
    /// them on the next start). Otherwise at once. A failure leaves them
    /// for the next commit.
    async fn commit_letters(&mut self) {
        let snapshot_needed = self.spec.has_state() && self.snapshot_file.is_some();
        if snapshot_needed {
            // The state that includes the letters, even after a trap: held
            // by a snapshot instead of leaving them applied but live.
            self.restore_instance().await;
        }
        if snapshot_needed && !self.take_snapshot(self.last_seq).await {
            tracing::warn!(
                plugin = &*self.spec.name,
                letters = self.letters_applied.len(),
                "redriven letters kept until a snapshot holds them"
            );
            return;
        }
        let ids = std::mem::take(&mut self.letters_applied);
        let store = self.dead_letters.clone();
        let removed = tokio::task::spawn_blocking(move || store.remove(&ids).map_err(|e| (e, ids))).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err((e, ids))) => {
                tracing::error!(plugin = &*self.spec.name, error = %e, "cannot remove redriven dead letters; kept for the next commit");
                self.letters_applied = ids;
            }
            Err(e) => tracing::error!(plugin = &*self.spec.name, error = %e, "dead-letter removal task failed"),
        }
    }

    /// Takes a snapshot now (`seq`: of the last event handled) and keeps it,
    /// beside the log too when there is one, once `seq` is durable in the
    /// log (a snapshot never claims a position a crash could take back).
    /// Returns whether it was taken and, with a log, persisted.
    async fn take_snapshot(&mut self, seq: Option<u64>) -> bool {
        let spec = self.spec.clone();
        if !spec.has_state() {
            return false;
        }
        let Some(instance) = self.instance.as_mut() else {
            return false;
        };
        match spec.snapshot(instance).await {
            Ok(Some(Ok(bytes))) => {
                let snapshot = Snapshot {
                    bytes: bytes.into(),
                    seq,
                    letters: self.letters_applied.clone().into(),
                };
                tracing::debug!(plugin = &*spec.name, seq = ?snapshot.seq, bytes = snapshot.bytes.len(), "snapshot taken");
                let mut kept = true;
                if self.snapshot_file.is_some()
                    && let Err(e) = self.dead_letters.write_unwritten()
                {
                    // A snapshot past an event whose letter is only in
                    // memory would lose both at the next restart: the
                    // last kept snapshot stays, and the event is handled
                    // again from it after a restart.
                    tracing::error!(plugin = &*spec.name, error = %e, "snapshot not kept: a dead letter could not be written yet");
                    return false;
                }
                if let Some((path, sync)) = self.snapshot_file.clone() {
                    kept = Self::persist(&spec.name, self.log.clone(), path, sync, snapshot.clone()).await;
                    if kept && let Some(bus) = self.bus.upgrade() {
                        bus.snapshot_kept(&spec.name, Some(snapshot.seq.unwrap_or(0)));
                    }
                }
                self.recovery.snapshotted(snapshot);
                self.stats.snapshotted();
                kept
            }
            Ok(Some(Err(reason))) => {
                tracing::warn!(plugin = &*spec.name, ?seq, %reason, "plugin declined a snapshot; keeping the previous one");
                self.recovery.snapshot_declined();
                false
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!(plugin = &*spec.name, ?seq, failure = e.failure.kind(), backtrace = ?e.frames, "plugin failed while taking a snapshot: {}", e.failure);
                self.instance = None;
                self.state.set(PluginState::Recovering);
                self.recovery.needs_rebuild = true;
                self.recovery.snapshot_declined();
                false
            }
        }
    }

    /// Waits until `event` is durable in the log the plugin's state is kept
    /// beside (true at once without one). False when it never will be: the
    /// log stopped or closed first.
    async fn durable_in_log(plugin: &str, log: Option<crate::log::EventLog>, event: &Event) -> bool {
        let (Some(log), Some(seq)) = (log, event.seq()) else {
            return true;
        };
        match log.wait_durable_in_turn(seq).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(plugin, event = event.name(), seq, error = %e, "no dead letter for an event the log does not hold");
                false
            }
        }
    }

    /// Writes `snapshot` beside the log once its position is durable there.
    async fn persist(
        name: &str,
        log: Option<crate::log::EventLog>,
        path: std::path::PathBuf,
        sync: bool,
        snapshot: Snapshot,
    ) -> bool {
        if let (Some(log), Some(seq)) = (&log, snapshot.seq)
            && let Err(e) = if seq > log.last_seq() {
                // Never numbered by this log (a position from before a crash
                // that took the log's tail): it would wait forever.
                Err(crate::LogError::Failed(
                    format!("position {seq} is past the log's end").into(),
                ))
            } else {
                log.wait_durable_in_turn(seq).await
            }
        {
            tracing::warn!(plugin = name, seq, error = %e, "snapshot not kept: its position is not durable in the log");
            return false;
        }
        let written =
            tokio::task::spawn_blocking(move || crate::plugin::recovery::persist(&path, &snapshot, sync)).await;
        match written.map_err(std::io::Error::other) {
            Ok(Ok(())) => true,
            Ok(Err(e)) | Err(e) => {
                tracing::error!(plugin = name, error = %e, "cannot keep the snapshot beside the log");
                false
            }
        }
    }

    /// A fresh instance after a failure, with the plugin's state brought
    /// back when a failure dropped the previous one: the last snapshot
    /// restored, the events handled since replayed (emits and logs silenced).
    /// When that is impossible, or the restore or a replayed event fails, the
    /// plugin starts with empty state, `plugbus.plugin.state_lost` says why,
    /// and a failed restore or replay counts toward quarantine.
    async fn rebuild(&mut self) -> Result<Instance, CallError> {
        let spec = self.spec.clone();
        let name = &*spec.name;
        crate::failpoint::hit("plugin.instantiate").map_err(|e| CallError::from(Failure::Host(e.to_string())))?;
        let mut instance = spec.instantiate().await?;
        self.stats.restarted();
        if !std::mem::take(&mut self.recovery.needs_rebuild) {
            tracing::info!(plugin = name, "plugin re-instantiated");
            return Ok(instance);
        }
        let started = Instant::now();
        match self.bring_back(&mut instance).await? {
            Ok(replayed) => {
                self.stats.rebuilt(true, replayed as u64);
                tracing::info!(
                    plugin = name,
                    replayed,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "plugin re-instantiated with its state restored"
                );
            }
            Err((reason, failure)) => {
                self.state_lost(&reason);
                if let Some(failure) = failure {
                    self.update_breaker(&Outcome::Failed(failure));
                }
            }
        }
        Ok(instance)
    }

    /// Brings the state `recovery` holds into `instance`: the snapshot
    /// restored, the events since replayed. `Ok(Ok(n))`: restored, `n`
    /// events replayed. `Ok(Err((why, failure)))`: it could not be; when the
    /// attempt failed hard, `instance` was replaced by a fresh one. `Err`:
    /// that fresh instance could not be built.
    async fn bring_back(
        &mut self,
        instance: &mut Instance,
    ) -> Result<Result<usize, (String, Option<Failure>)>, CallError> {
        let spec = self.spec.clone();
        match self.recovery.plan(&spec.limits) {
            Plan::Lost(reason) => Ok(Err((reason, None))),
            Plan::Rebuild { snapshot, events } => match self.restore_into(instance, snapshot, &events).await {
                Ok(()) => Ok(Ok(events.len())),
                Err((reason, failure)) => {
                    if failure.is_some() {
                        // That call poisoned the instance.
                        *instance = spec.instantiate().await?;
                    }
                    Ok(Err((reason, failure)))
                }
            },
        }
    }

    /// The state could not be brought back: the plugin starts empty, and
    /// `plugbus.plugin.state_lost` says why.
    fn state_lost(&mut self, reason: &str) {
        tracing::warn!(plugin = &*self.spec.name, %reason, "plugin state lost; it starts empty");
        self.announce_state_lost(reason, json!({}));
        self.recovery.reset();
    }

    /// Counts a loss of state and publishes `plugbus.plugin.state_lost`
    /// `{name, reason, …extra}`.
    fn announce_state_lost(&self, reason: &str, extra: serde_json::Value) {
        let name = &*self.spec.name;
        self.stats.rebuilt(false, 0);
        let mut payload = json!({ "name": name, "reason": reason });
        if let (Some(payload), serde_json::Value::Object(extra)) = (payload.as_object_mut(), extra) {
            payload.extend(extra);
        }
        self.meta("plugbus.plugin.state_lost", payload);
    }

    /// Restores `snapshot` into `instance` and replays `events`. On failure:
    /// why, and the hard failure if there was one (the instance is then poisoned).
    async fn restore_into(
        &mut self,
        instance: &mut Instance,
        snapshot: Option<Snapshot>,
        events: &[Event],
    ) -> Result<(), (String, Option<Failure>)> {
        let spec = self.spec.clone();
        if let Some(snapshot) = snapshot {
            match spec.restore(instance, &snapshot.bytes).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Err((format!("restore refused the snapshot: {reason}"), None)),
                Err(e) => return Err((format!("restore failed: {}", e.failure), Some(e.failure))),
            }
        }
        let replay_failed = |event: &Event, failure: Failure| {
            (
                format!(
                    "replaying event {} ({}) failed: {failure}",
                    event.seq().unwrap_or(0),
                    event.name()
                ),
                Some(failure),
            )
        };
        let mut rest = events;
        while let Some(first) = rest.first() {
            let n = batch_len(rest, spec.max_batch(), spec.limits.batch_bytes);
            let (batch, tail) = rest.split_at(n);
            if n == 1 {
                let (result, _fuel) = spec.on_event(instance, first, Voice::Silent).await;
                if let Err(e) = result {
                    return Err(replay_failed(first, e.failure));
                }
            } else if let Err(e) = spec.on_events(instance, batch, Voice::Silent).await.result {
                // Replays are silent and the state is lost either way: which
                // event failed is only for the message.
                return Err(replay_failed(first, e.failure));
            }
            rest = tail;
        }
        Ok(())
    }

    fn finish(&self, event: &Event, outcome: &Outcome, fuel: u64, frames: &[String]) {
        let plugin = &*self.spec.name;
        self.stats.record(outcome, fuel);
        self.state.settle();
        if let Outcome::Failed(failure) = outcome {
            self.stats.failed(event, failure, frames);
        }
        match outcome {
            Outcome::Ok | Outcome::Dropped(_) => {}
            Outcome::Error(msg) => {
                tracing::warn!(plugin, event = event.name(), event_id = event.id(), error = %msg, "plugin returned an error");
            }
            Outcome::Failed(failure) => {
                self.state.set(PluginState::Recovering);
                tracing::error!(
                    plugin,
                    event = event.name(),
                    event_id = event.id(),
                    failure = failure.kind(),
                    backtrace = ?frames,
                    "plugin failed: {failure}"
                );
                if let Some(bus) = self.bus.upgrade() {
                    bus.report_failure(event, plugin, failure);
                }
            }
        }
    }
}

/// What the bus holds of a running plugin: cheap to share; the worker task
/// owns the store.
pub(crate) struct PluginHandle {
    pub spec: Arc<PluginSpec>,
    pub seq: u64,
    pub subscriptions: Vec<String>,
    pub tx: mpsc::Sender<Job>,
    /// Queries for the worker, answered between two events.
    pub queries: mpsc::Sender<QueryJob>,
    pub stats: Arc<StatsCell>,
    pub state: Arc<WorkerState>,
    pub dead_letters: Arc<DeadLetters>,
    /// The state the worker left when it stopped, for a hot-swapped successor.
    pub handoff: Arc<std::sync::Mutex<Option<Handoff>>>,
    /// Why the last hot reload of this plugin failed (the old version keeps
    /// running); cleared by a successful one.
    pub reload_error: std::sync::Mutex<Option<String>>,
    /// Fired to make the worker drain its queue and stop.
    pub stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    pub task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PluginHandle {
    /// Queues `job` without waiting. A full or closed queue drops the event
    /// for this plugin, counts it, and answers the waiter if there is one.
    /// Returns whether the job was queued.
    ///
    /// Quarantine is not checked here: the publisher checks
    /// [`quarantined_now`](Self::quarantined_now) first, and a job that slips
    /// in as quarantine begins is dropped by the worker with the same reason.
    pub fn offer(&self, job: Job) -> bool {
        let (job, reason) = match self.tx.try_send(job) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(job)) => (job, DropReason::QueueFull),
            Err(mpsc::error::TrySendError::Closed(job)) => (job, DropReason::Unloaded),
        };
        self.refuse(job, reason);
        false
    }

    /// [`offer`](Self::offer) for an event published live, under the bus's
    /// publish lock: on a bus with a log, a full queue leaves the event in
    /// the log for the worker to read back (see [`Overflow`]) instead of
    /// dropping it; so does every later event until the worker has caught
    /// up. Returns whether the job was queued or left in the log (then it
    /// stays in flight until the worker has read it). A waiter on a job left
    /// in the log is answered at once, `Dropped(Deferred)`: the event is
    /// handled later, from the log.
    ///
    /// `stored`: the log took the event (one it refused, its writer's buffer
    /// full, cannot be read back: it is queued, or dropped if it cannot be
    /// queued in order).
    pub fn offer_live(&self, job: Job, stored: bool) -> bool {
        let overflow = &self.state.overflow;
        let Some(seq) = job.event.seq().filter(|_| overflow.enabled.load(Ordering::Acquire)) else {
            return self.offer(job);
        };
        // No range open (the common case): the queue, without the mutex.
        let job = if !overflow.active.load(Ordering::Acquire) {
            match self.tx.try_send(job) {
                Ok(()) => return true,
                // Opens a range, below.
                Err(mpsc::error::TrySendError::Full(job)) if stored && overflow.log_can_hold(&job.event) => {
                    // A test pauses here: the worker may empty its queue
                    // and wait on it before the range is open.
                    let _ = crate::failpoint::hit("plugin.overflow.open");
                    job
                }
                Err(mpsc::error::TrySendError::Full(job)) => {
                    self.refuse(job, DropReason::QueueFull);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(job)) => {
                    self.refuse(job, DropReason::Unloaded);
                    return false;
                }
            }
        } else if !stored || !overflow.log_can_hold(&job.event) {
            // Queued now it would run before the older events left in the
            // log; the log itself does not have it.
            self.refuse(job, DropReason::QueueFull);
            return false;
        } else if self.tx.is_closed() {
            self.refuse(job, DropReason::Unloaded);
            return false;
        } else {
            job
        };
        let mut range = overflow.range();
        if range.first == 0 {
            range.first = seq;
            overflow.active.store(true, Ordering::Release);
            *overflow.pin() = overflow.log.get().map(|log| log.pin(seq));
            overflow.opened.notify_one();
            tracing::warn!(
                plugin = &*self.spec.name,
                event = job.event.name(),
                seq,
                "plugin queue full: its events are left in the event log and read back from there"
            );
        }
        range.last = seq;
        range.count += 1;
        drop(range);
        if let Some(reply) = job.reply {
            let _ = reply.send(Outcome::Dropped(DropReason::Deferred));
        }
        true
    }

    /// True while the plugin is quarantined: the publisher drops its events
    /// up front ([`refuse`](Self::refuse)) without queueing or counting them
    /// as in flight, so a quarantined plugin costs an emit next to nothing.
    pub fn quarantined_now(&self) -> bool {
        self.state.quarantined_now()
    }

    /// Whether a full queue left events in the log that the worker has yet
    /// to read back (read under the bus's publish lock, which opens and
    /// closes the range).
    pub fn reading_back(&self) -> bool {
        self.state.overflow.pending()
    }

    /// Drops `job` for this plugin: counts it and answers its waiter.
    pub fn refuse(&self, job: Job, reason: DropReason) {
        let outcome = count_drop(&self.stats, &self.spec.name, &job.event, reason);
        if let Some(reply) = job.reply {
            let _ = reply.send(outcome);
        }
    }

    /// Asks the worker to drain and stop, and waits for it.
    pub async fn stop_and_join(&self) {
        self.signal_stop();
        self.join().await;
    }

    /// Asks the worker to refuse new events and stop once its queue is empty.
    pub fn signal_stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
    }

    /// Makes the worker drop (and count) what is left in its queue instead
    /// of running it: the shutdown grace period is over.
    pub fn abandon(&self) {
        self.state.abandon.store(true, Ordering::Release);
    }

    /// Waits for the worker task to end. Cancel-safe: a timed-out wait can
    /// simply be started again.
    pub async fn join(&self) {
        loop {
            let notified = self.state.finished_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.finished.load(Ordering::Acquire) {
                break;
            }
            notified.await;
        }
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(plugin = &*self.spec.name, error = %e, "plugin worker ended abnormally");
        }
    }
}

/// One part of a batch still to run (see `Worker::run_batch`).
enum Step {
    /// These events in one call (one call each when fewer than two).
    Batch(std::ops::Range<usize>, Voice),
    /// These events one call each, the first `.2` of them writing no log lines.
    Each(std::ops::Range<usize>, Voice, usize),
    /// The event a batch failed on, on its own budgets: failed without
    /// running again, with what it cost and why.
    Poison(usize, crate::plugin::ctx::Mark, CallError),
}

/// How many events from the front of `events` make one batch: at most
/// `max`, and no more than `bytes` of payload (always at least one).
fn batch_len(events: &[Event], max: usize, bytes: usize) -> usize {
    let mut total = 0;
    let mut n = 0;
    for event in events.iter().take(max.max(1)) {
        total += payload_bytes(event);
        if n > 0 && total > bytes {
            break;
        }
        n += 1;
    }
    n.max(1).min(events.len())
}

/// The bytes of `event`'s payload as plugins receive it.
fn payload_bytes(event: &Event) -> usize {
    event.payload_json().len()
}

/// Where a test makes the host panic in a worker's turn (failpoint
/// `plugin.worker.panic` set to `return(NAME)`: a turn holding an event
/// named NAME), as a bug in the host would. Without the `failpoints`
/// feature: nothing.
fn host_bug_point<'a>(mut events: impl Iterator<Item = &'a Event>) {
    if let Some(name) = crate::failpoint::value("plugin.worker.panic")
        && events.any(|event| event.name() == name)
    {
        panic!("failpoint plugin.worker.panic: a turn holding {name}");
    }
}

/// Books a closed range: those of its events not handled count as dropped,
/// and all of them are done as far as `flush` goes. Every subscribed event
/// counts once.
fn finish_range(stats: &StatsCell, bus: &dyn BusPort, range: OverflowRange) {
    stats.dropped_many(range.count.saturating_sub(range.handled));
    bus.jobs_done(range.count);
}

/// Counts an event dropped for `plugin` (by the publisher or the worker) and
/// logs it; the caller answers the waiter.
fn count_drop(stats: &StatsCell, plugin: &str, event: &Event, reason: DropReason) -> Outcome {
    let outcome = Outcome::Dropped(reason);
    stats.record(&outcome, 0);
    tracing::debug!(plugin, event = event.name(), %reason, "event dropped for plugin");
    outcome
}
