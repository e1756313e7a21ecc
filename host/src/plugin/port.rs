//! The narrow handle through which a plugin's instance and its worker reach
//! the bus: publish an event, hand over a follow-up, report a failure, say a
//! queued job is done. The bus implements it; plugin code holds a
//! `Weak<dyn BusPort>` and never the bus's internals, so dependencies run one
//! way: `bus` → `worker` → `plugin` → `ctx` → `port`.

use std::sync::Arc;

use crate::event::Event;
use crate::outcome::Failure;

/// What plugin code may ask of the bus.
pub(crate) trait BusPort: Send + Sync {
    /// Publishes an event (a follow-up or a `plugbus.*` meta-event).
    fn publish(&self, event: Event);

    /// Takes a plugin's follow-up: published, captured by a replay, or
    /// dropped, as the bus is configured. `Err` with the reason when the bus
    /// no longer accepts events.
    fn follow_up(&self, follow_up: Captured) -> Result<(), String>;

    /// One queued job (or async handler) finished.
    fn job_done(&self);

    /// `count` queued jobs finished (events read back from the log, or
    /// given up), one at a time: the bus's drain levels are passed through
    /// one by one.
    fn jobs_done(&self, count: u64) {
        for _ in 0..count {
            self.job_done();
        }
    }

    /// Checks a follow-up against the schema of its name: `Err` with the
    /// reason, which the guest's `emit` returns.
    fn check_schema(&self, name: &str, payload: &serde_json::Value) -> Result<(), String>;

    /// Runs the embedder's failure hook, isolated like any handler.
    fn report_failure(&self, event: &Event, handler: &str, failure: &Failure);

    /// A plugin's snapshot at `seq` is kept beside the log: the plugin needs
    /// the log from `seq + 1` on (the log's retention floor follows the
    /// lowest of these). `None`: the plugin keeps no snapshot any more.
    fn snapshot_kept(&self, plugin: &str, seq: Option<u64>);

    /// Runs `f` under the bus's publish lock: no event is published (given
    /// its sequence number and offered to the plugins) meanwhile.
    fn under_publish_lock(&self, f: &mut dyn FnMut());
}

/// A follow-up with what orders it in a replay's output.
pub(crate) struct Captured {
    /// Sequence number of the event being handled when it was emitted.
    pub parent_seq: u64,
    pub plugin: Arc<str>,
    /// Its place among that event's emits.
    pub index: u32,
    pub event: Event,
}

/// What becomes of the follow-up events plugins emit.
#[derive(Clone, Default)]
pub(crate) enum FollowUps {
    /// Published on the bus (the live behaviour).
    #[default]
    Publish,
    /// Sent to a replay, which orders and prints them; never published.
    Capture(std::sync::mpsc::Sender<Captured>),
    /// Dropped (counted).
    Discard(std::sync::Arc<std::sync::atomic::AtomicU64>),
    /// A replay's `--emit publish`: published unless the log holds it
    /// already (see [`Republish`]).
    Republish(std::sync::Arc<Republish>),
}

/// What a replay publishing its follow-ups knows and counts. A follow-up's
/// id is derived from its parent's and its place among the parent's emits,
/// so the one a replay makes again has the id of the one the live run
/// logged, if it did: that one is not appended a second time.
#[derive(Default)]
pub(crate) struct Republish {
    /// Ids of the follow-ups the log holds in the range replayed.
    pub logged: std::collections::HashSet<String>,
    /// Follow-ups published (the log did not hold them).
    pub published: std::sync::atomic::AtomicU64,
    /// Follow-ups not published: the log holds them already.
    pub already_logged: std::sync::atomic::AtomicU64,
}
