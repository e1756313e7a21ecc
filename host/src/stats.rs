//! Per-plugin counters, updated by the plugin's worker and the emit path
//! (atomics, no locks) and read as a [`PluginStats`] snapshot.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::outcome::{Failure, Outcome};

/// Counters of one plugin. Once its queue is drained,
/// `delivered + dropped` equals the events that matched its subscriptions,
/// and `ok + errors + failures.total() == delivered`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PluginStats {
    /// Events the plugin ran (whatever the outcome).
    pub delivered: u64,
    /// Events it accepted.
    pub ok: u64,
    /// Events for which it returned `err`.
    pub errors: u64,
    /// Hard failures, by kind.
    pub failures: FailureCounts,
    /// Events that never reached it (queue full, unloaded).
    pub dropped: u64,
    /// Times its instance was rebuilt after a failure.
    pub restarts: u64,
    /// Fuel burned over all events.
    pub fuel_consumed: u64,
    /// Snapshots taken of its state (plugins with the `state` export).
    pub snapshots: u64,
    /// `on-events` calls that handled a batch of two or more events
    /// (plugins with the `batch-handler` export); a failed batch, whose
    /// events then ran one call each, is not counted.
    pub batches: u64,
    /// Events handled in those batches (`batched / batches` is the mean
    /// batch size).
    pub batched: u64,
    /// Time its worker spent on events, in nanoseconds: the calls, rebuilds,
    /// snapshots and the host's own bookkeeping, not waiting for events or
    /// answering queries. `busy_nanos / delivered` is what an event costs
    /// the plugin's thread, whatever the emitter's pace; against the time
    /// since it loaded, how busy the plugin is.
    pub busy_nanos: u64,
    /// Rebuilds after a failure that brought its state back (restore of the
    /// last snapshot and/or replay of the events handled since).
    pub state_restored: u64,
    /// Rebuilds after which its state could not be brought back (announced
    /// as `plugbus.plugin.state_lost`).
    pub state_lost: u64,
    /// Logged or kept events replayed into it: to rebuild its state after a
    /// trap, and to catch up with the log when loaded with `replay`.
    pub replayed: u64,
    /// Events that failed it hard and went to its dead-letter list.
    pub dead_letters: u64,
    /// Queries answered (plugins with the `query` export), its own refusals
    /// included.
    pub queries: u64,
    /// Queries that failed hard (trap, fuel, deadline): each one rebuilt the
    /// instance with its state, as a failed event does.
    pub query_failures: u64,
    /// Linear memory held by the plugin's current instance, in bytes (0
    /// before the first instance and while it is being rebuilt). Interpreted
    /// runtimes start with tens of MiB; this is what to compare with the
    /// `memory_mib` limit.
    pub memory_bytes: u64,
    /// The most recent error or failure, described.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The most recent hard failure handling an event, with its backtrace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,
    /// How long the plugin took per event (queue wait excluded).
    #[serde(skip)]
    pub latency: LatencyHistogram,
}

/// A plugin's most recent hard failure on an event (a query's failure is
/// reported to the asker instead).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastFailure {
    /// The failure's kind, one of [`Failure::KINDS`].
    pub kind: &'static str,
    /// The failure, described.
    pub message: String,
    /// The event's name.
    pub event: String,
    /// The event's id.
    pub event_id: String,
    /// When it failed, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The wasm backtrace's function names, innermost first (empty when the
    /// failure has none, as for a host-side error).
    pub backtrace: Vec<String>,
}

/// Upper bounds of the latency buckets, in seconds: from 10 µs (a small
/// plugin's call) to 1 s (far past the default deadline).
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A latency histogram snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Events per bucket (not cumulative): `buckets[i]` counts durations
    /// `<= LATENCY_BOUNDS[i]` and above the previous bound; the last entry
    /// counts everything above the last bound.
    pub buckets: Vec<u64>,
    /// Sum of all durations, in seconds.
    pub sum_seconds: f64,
    /// Number of durations recorded.
    pub count: u64,
}

impl LatencyHistogram {
    /// The `q` quantile (0.0..=1.0) in seconds, interpolated linearly inside
    /// its bucket as Prometheus' `histogram_quantile` does; durations past
    /// the last bound count as that bound. `None` before the first event.
    ///
    /// ```
    /// # use plugbus::stats::LatencyHistogram;
    /// let mut buckets = vec![0; 15];
    /// buckets[1] = 100; // 100 events in (10 µs, 50 µs]
    /// let h = LatencyHistogram { buckets, sum_seconds: 0.003, count: 100 };
    /// let p50 = h.quantile(0.5).unwrap();
    /// assert!((p50 - 0.00003).abs() < 1e-9);
    /// ```
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = LATENCY_BOUNDS.get(i) else {
                    return LATENCY_BOUNDS.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        LATENCY_BOUNDS.last().copied()
    }
}

// `f64` is not `Eq`, but a snapshot compares equal exactly when its counts do.
impl Eq for LatencyHistogram {}

/// Hard failures by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FailureCounts {
    /// See [`Failure::Panic`].
    pub panic: u64,
    /// See [`Failure::OutOfFuel`].
    pub out_of_fuel: u64,
    /// See [`Failure::Deadline`].
    pub deadline: u64,
    /// See [`Failure::MemoryLimit`].
    pub memory_limit: u64,
    /// See [`Failure::StackOverflow`].
    pub stack_overflow: u64,
    /// See [`Failure::Trap`].
    pub trap: u64,
    /// See [`Failure::Host`].
    pub host: u64,
}

impl FailureCounts {
    /// All failures together.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }

    /// `(kind, count)` pairs in [`Failure::KINDS`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let counts = [
            self.panic,
            self.out_of_fuel,
            self.deadline,
            self.memory_limit,
            self.stack_overflow,
            self.trap,
            self.host,
        ];
        Failure::KINDS.into_iter().zip(counts)
    }

    /// Builds the counts from an array indexed like [`Failure::KINDS`].
    fn from_array(counts: [u64; 7]) -> FailureCounts {
        let [panic, out_of_fuel, deadline, memory_limit, stack_overflow, trap, host] = counts;
        FailureCounts {
            panic,
            out_of_fuel,
            deadline,
            memory_limit,
            stack_overflow,
            trap,
            host,
        }
    }
}

#[derive(Default)]
pub(crate) struct StatsCell {
    delivered: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    failures: [AtomicU64; 7],
    dropped: AtomicU64,
    restarts: AtomicU64,
    fuel: AtomicU64,
    snapshots: AtomicU64,
    batches: AtomicU64,
    batched: AtomicU64,
    busy_nanos: AtomicU64,
    state_restored: AtomicU64,
    state_lost: AtomicU64,
    replayed: AtomicU64,
    dead_letters: AtomicU64,
    queries: AtomicU64,
    query_failures: AtomicU64,
    memory: AtomicU64,
    last_error: Mutex<Option<String>>,
    last_failure: Mutex<Option<LastFailure>>,
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_nanos: AtomicU64,
}

impl StatsCell {
    pub fn record(&self, outcome: &Outcome, fuel: u64) {
        self.fuel.fetch_add(fuel, Relaxed);
        match outcome {
            Outcome::Ok => {
                self.delivered.fetch_add(1, Relaxed);
                self.ok.fetch_add(1, Relaxed);
            }
            Outcome::Error(msg) => {
                self.delivered.fetch_add(1, Relaxed);
                self.errors.fetch_add(1, Relaxed);
                self.set_last_error(msg.clone());
            }
            Outcome::Failed(f) => {
                self.delivered.fetch_add(1, Relaxed);
                self.failures[f.index()].fetch_add(1, Relaxed);
                self.set_last_error(f.to_string());
            }
            Outcome::Dropped(_) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Counts `count` events dropped at once (a range left in the log and
    /// let go of unread).
    pub fn dropped_many(&self, count: u64) {
        self.dropped.fetch_add(count, Relaxed);
    }

    /// Keeps `failure` on `event`, with its backtrace, as the last failure.
    pub fn failed(&self, event: &crate::Event, failure: &Failure, frames: &[String]) {
        let at_unix_ms = crate::event::now_nanos() / 1_000_000;
        let record = LastFailure {
            kind: failure.kind(),
            message: failure.to_string(),
            event: event.name().to_owned(),
            event_id: event.id().to_owned(),
            at_unix_ms,
            backtrace: frames.to_vec(),
        };
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// Records how long one event took the plugin.
    pub fn observe(&self, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_nanos
            .fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Records the linear memory the current instance holds.
    pub fn set_memory(&self, bytes: usize) {
        self.memory.store(bytes as u64, Relaxed);
    }

    pub fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    pub fn snapshotted(&self) {
        self.snapshots.fetch_add(1, Relaxed);
    }

    /// The worker spent `time` on events.
    pub fn busy(&self, time: std::time::Duration) {
        self.busy_nanos
            .fetch_add(u64::try_from(time.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A batch of `events` events handled in one call.
    pub fn batch(&self, events: usize) {
        self.batches.fetch_add(1, Relaxed);
        self.batched.fetch_add(events as u64, Relaxed);
    }

    /// A rebuild after a failure: whether the state came back, and how many
    /// events were replayed for it.
    pub fn rebuilt(&self, restored: bool, replayed: u64) {
        if restored {
            self.state_restored.fetch_add(1, Relaxed);
        } else {
            self.state_lost.fetch_add(1, Relaxed);
        }
        self.add_replayed(replayed);
    }

    /// Events replayed into the plugin (rebuilding state, or catching up).
    pub fn add_replayed(&self, n: u64) {
        self.replayed.fetch_add(n, Relaxed);
    }

    /// A query ran: answered (or refused by the plugin), or failed hard.
    pub fn queried(&self, failed: bool) {
        if failed {
            self.query_failures.fetch_add(1, Relaxed);
        } else {
            self.queries.fetch_add(1, Relaxed);
        }
    }

    pub fn dead_lettered(&self) {
        self.dead_letters.fetch_add(1, Relaxed);
    }

    fn set_last_error(&self, msg: String) {
        // Poisoning only happens if a panic occurred while holding the lock,
        // which `replace` cannot do; recover the value either way.
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
    }

    pub fn snapshot(&self) -> PluginStats {
        PluginStats {
            delivered: self.delivered.load(Relaxed),
            ok: self.ok.load(Relaxed),
            errors: self.errors.load(Relaxed),
            failures: FailureCounts::from_array(self.failures.each_ref().map(|n| n.load(Relaxed))),
            dropped: self.dropped.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            fuel_consumed: self.fuel.load(Relaxed),
            snapshots: self.snapshots.load(Relaxed),
            batches: self.batches.load(Relaxed),
            batched: self.batched.load(Relaxed),
            busy_nanos: self.busy_nanos.load(Relaxed),
            state_restored: self.state_restored.load(Relaxed),
            state_lost: self.state_lost.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            queries: self.queries.load(Relaxed),
            query_failures: self.query_failures.load(Relaxed),
            memory_bytes: self.memory.load(Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            last_failure: self.last_failure.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            latency: {
                let buckets: Vec<u64> = self.latency.iter().map(|n| n.load(Relaxed)).collect();
                LatencyHistogram {
                    count: buckets.iter().sum(),
                    buckets,
                    sum_seconds: self.latency_nanos.load(Relaxed) as f64 / 1e9,
                }
            },
        }
    }
}
