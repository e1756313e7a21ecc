//! Resource limits for plugins.
//!
//! Every limit applies to one plugin, per event, unless it says otherwise. The
//! defaults suit small observers written in compiled languages; interpreted
//! plugins (Python, JavaScript) usually need more memory and fuel, set per
//! plugin in its manifest.

use std::time::Duration;

/// Limits applied to each plugin. Set per bus with
/// [`BusBuilder::limits`](crate::BusBuilder::limits); a plugin's manifest may
/// override any of them for that plugin.
///
/// ```
/// use std::time::Duration;
/// let limits = plugbus::Limits { deadline: Duration::from_millis(20), ..Default::default() };
/// assert_eq!(limits.fuel, 50_000_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Fuel (roughly, wasm instructions) one event may burn. Default
    /// 50 million, about 20–50 ms of straight-line work here. When it runs
    /// out the call traps with [`Failure::OutOfFuel`](crate::Failure::OutOfFuel)
    /// and the instance is rebuilt before the next event.
    pub fuel: u64,
    /// Wall-clock time one event may take, including time spent waiting in
    /// host calls (a WASI sleep). Default 100 ms. When it passes the call is
    /// stopped with [`Failure::Deadline`](crate::Failure::Deadline).
    pub deadline: Duration,
    /// Most linear memory a plugin instance may hold, in bytes. Default
    /// 64 MiB. A `memory.grow` beyond it fails inside the guest; if the guest
    /// then traps the failure is [`Failure::MemoryLimit`](crate::Failure::MemoryLimit).
    pub memory_bytes: usize,
    /// Events waiting in a plugin's queue. Default 1024: a few seconds of a
    /// busy agent's events, while bounding the memory a stalled plugin can
    /// hold. When full, new events are dropped for that plugin and counted.
    pub queue_capacity: usize,
    /// Follow-up events one event's handler may emit. Default 64; past it
    /// `host.emit` returns an error to the guest.
    pub emits_per_event: u32,
    /// Log lines (`host.log` plus stdout/stderr lines) one event may write.
    /// Default 256; later lines are dropped and counted in one warning.
    pub log_lines_per_event: u32,
    /// Longest log line kept, in bytes; longer lines are truncated. Default 4 KiB.
    pub log_line_bytes: usize,
    /// Consecutive hard failures (traps, limits, panics; not returned
    /// errors) after which the plugin is quarantined: it stops receiving
    /// events, which are counted as dropped (`quarantined`), until a backoff
    /// passes. Default 5; 0 disables quarantine.
    pub quarantine_after: u32,
    /// First quarantine backoff. Each failed retry doubles it, up to
    /// [`quarantine_backoff_max`](Self::quarantine_backoff_max); one success
    /// resets it. Default 1 s.
    pub quarantine_backoff: Duration,
    /// Longest quarantine backoff. Default 5 min.
    pub quarantine_backoff_max: Duration,
    /// For plugins that export `state`: take a snapshot after a successful
    /// event once this many events were handled since the last one. Default
    /// 1000: after a trap at most this many events are replayed (a few
    /// milliseconds for a compiled plugin), while snapshotting costs a small
    /// fraction of the events' own time. 0 turns periodic snapshots off.
    pub snapshot_every: u32,
    /// …or once this much time passed since the last snapshot (checked after
    /// each event). Default 10 s: bounds what a restart re-reads from the log
    /// for a plugin that sees few events.
    pub snapshot_interval: Duration,
    /// Events the host keeps (in memory, shared with the queues) to rebuild
    /// a plugin's state by replay after a trap: those handled since its last
    /// snapshot, or, for a plugin without `state`, since its instance
    /// started. Default 10,000 (about 30 ms of replay for a compiled
    /// plugin). Past it a stateless plugin's state cannot be rebuilt: after
    /// its next trap it starts empty and `plugbus.plugin.state_lost` says so.
    pub replay_max_events: usize,
    /// …and at most this many payload bytes. Default 64 MiB: a count alone
    /// would let 10,000 events of up to 1 MiB each hold 10 GiB; 64 MiB is the
    /// default memory cap of one instance, and holds the 10,000 events of a
    /// typical agent stream (a few KiB each). Past it, as past the count.
    pub replay_max_bytes: usize,
    /// For plugins that export `query`: fuel one query may burn. Default
    /// 100 million, twice an event's: an event touches one entry of a read
    /// model while a query may scan all of it (listing 50 of `agent-runs`'
    /// 10,000 runs by status takes about 5 million). When it runs out the
    /// caller gets [`QueryError::Limit`](crate::QueryError::Limit) and the
    /// plugin is rebuilt with its state, as after any trap.
    pub query_fuel: u64,
    /// Wall-clock time one query may take. Default 200 ms: the plugin's
    /// events wait while a query runs, so this bounds how long one query
    /// can hold them up. When it passes the caller gets
    /// [`QueryError::Limit`](crate::QueryError::Limit), as for fuel.
    pub query_deadline: Duration,
    /// For plugins that export `state`: fuel one `snapshot` or `restore` may
    /// burn. Default 1 billion, twenty events' worth: unlike an event, these
    /// serialise or parse the whole state (`agent-runs` holding 10,000 runs
    /// writes about 3 MB of JSON for ~100 million). When it runs out the
    /// snapshot is skipped (the previous one is kept) or the restore
    /// fails, and the state is rebuilt by replay instead, as the durability
    /// guide describes.
    pub state_fuel: u64,
    /// Wall-clock time one `snapshot` or `restore` may take. Default 1 s:
    /// the plugin's events wait meanwhile.
    pub state_deadline: Duration,
    /// For plugins that export `batch-handler`: most events handed over in
    /// one `on-events` call. Default 64: enough that the call's fixed cost
    /// (entry, arming, the async poll) is a few percent of a small
    /// plugin's per-event work, while a batch holds at most this many
    /// events' worth of the guest's memory and a trap in it re-runs at most
    /// this many events one by one. The worker takes what is already queued
    /// and never waits to fill a batch. 1 turns batching off.
    pub max_batch: usize,
    /// …and at most this many payload bytes per batch (a batch always takes
    /// at least one event, whatever its size). Default 1 MiB: the events
    /// are copied into the guest's memory at once, so this bounds that
    /// copy against the memory cap.
    pub batch_bytes: usize,
}

/// Deepest chain of follow-up events: an event emitted by a plugin while
/// handling an event emitted by a plugin… at most this many levels. Eight is
/// deeper than any real observer chain and stops two plugins that answer each
/// other after a few microseconds. Not configurable: it is what makes cascades
/// terminate.
pub const MAX_CASCADE_DEPTH: u8 = 8;

impl Limits {
    /// Events a feeder that waits between bursts (a redrive, `plugbus run`,
    /// a replay) may offer one plugin at once: half its queue, at least 1,
    /// so the other half stays free for live events and follow-ups.
    pub(crate) fn burst(&self) -> usize {
        (self.queue_capacity / 2).max(1)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 50_000_000,
            deadline: Duration::from_millis(100),
            memory_bytes: 64 << 20,
            queue_capacity: 1024,
            emits_per_event: 64,
            log_lines_per_event: 256,
            log_line_bytes: 4096,
            quarantine_after: 5,
            quarantine_backoff: Duration::from_secs(1),
            quarantine_backoff_max: Duration::from_secs(300),
            snapshot_every: 1000,
            snapshot_interval: Duration::from_secs(10),
            replay_max_events: 10_000,
            replay_max_bytes: 64 << 20,
            query_fuel: 100_000_000,
            query_deadline: Duration::from_millis(200),
            state_fuel: 1_000_000_000,
            state_deadline: Duration::from_secs(1),
            max_batch: 64,
            batch_bytes: 1 << 20,
        }
    }
}
