//! What a plugin's worker keeps to bring the plugin's state back after a
//! trap: the last snapshot of a plugin that exports `state`, and the events
//! it handled since (since its instance started, for a plugin without
//! `state`). After a trap the worker builds a fresh instance, restores the
//! snapshot and replays those events, without the one that trapped, with
//! the plugin's emits and logs silenced (they happened the first time).
//!
//! The events are the bus's own `Arc`s, shared with the queues and the
//! history: keeping them costs a pointer each, plus their payloads for as
//! long as they are kept, which [`Limits::replay_max_events`] bounds.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::event::Event;
use crate::limits::Limits;

/// A plugin's last good snapshot.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub bytes: Arc<[u8]>,
    /// Sequence number of the last event the snapshot includes.
    pub seq: Option<u64>,
}

/// Owned by the plugin's worker alone.
pub(crate) struct Recovery {
    pub snapshot: Option<Snapshot>,
    /// Events handled since the snapshot (or since the instance started).
    since: VecDeque<Event>,
    /// False once more events were handled than can be kept: the state can
    /// no longer be rebuilt by replay.
    complete: bool,
    handled_since_snapshot: u32,
    last_snapshot: Instant,
    /// A failure dropped the instance: the next one must get the state back.
    pub needs_rebuild: bool,
}

/// How to rebuild the state, decided before touching the new instance.
pub(crate) enum Plan {
    /// Restore this snapshot (if any), then replay these events.
    Rebuild {
        snapshot: Option<Snapshot>,
        events: Vec<Event>,
    },
    /// The state cannot be rebuilt; why.
    Lost(String),
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            snapshot: None,
            since: VecDeque::new(),
            complete: true,
            handled_since_snapshot: 0,
            last_snapshot: Instant::now(),
            needs_rebuild: false,
        }
    }
}

impl Recovery {
    /// Records an event the plugin handled (returned ok or err): part of its
    /// state from now on.
    pub fn handled(&mut self, event: &Event, limits: &Limits) {
        self.handled_since_snapshot = self.handled_since_snapshot.saturating_add(1);
        if !self.complete {
            return;
        }
        if self.since.len() >= limits.replay_max_events {
            self.complete = false;
            self.since = VecDeque::new();
            return;
        }
        self.since.push_back(event.clone());
    }

    /// Whether a plugin with `state` should be snapshotted now.
    pub fn snapshot_due(&self, limits: &Limits) -> bool {
        (limits.snapshot_every > 0 && self.handled_since_snapshot >= limits.snapshot_every)
            || (self.handled_since_snapshot > 0 && self.last_snapshot.elapsed() >= limits.snapshot_interval)
    }

    /// A snapshot was taken after the last handled event.
    pub fn snapshotted(&mut self, snapshot: Snapshot) {
        self.snapshot = Some(snapshot);
        self.since.clear();
        self.complete = true;
        self.handled_since_snapshot = 0;
        self.last_snapshot = Instant::now();
    }

    /// The snapshot was declined: try again after the next event.
    pub fn snapshot_declined(&mut self) {
        self.last_snapshot = Instant::now();
    }

    /// What to do for the instance being rebuilt.
    pub fn plan(&self, limits: &Limits) -> Plan {
        if !self.complete {
            return Plan::Lost(format!(
                "more than {} events since its last snapshot or start (limits.replay_max_events)",
                limits.replay_max_events
            ));
        }
        Plan::Rebuild {
            snapshot: self.snapshot.clone(),
            events: self.since.iter().cloned().collect(),
        }
    }

    /// The state is gone: the new instance starts empty, and so does the
    /// record of what it handled.
    pub fn reset(&mut self) {
        *self = Recovery::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn keeps_what_was_handled_since_the_snapshot_up_to_the_bound() {
        let limits = Limits {
            replay_max_events: 3,
            snapshot_every: 2,
            ..Limits::default()
        };
        let mut r = Recovery::default();
        let ev = |n: &str| Event::new(n, Value::Null);
        r.handled(&ev("a"), &limits);
        assert!(!r.snapshot_due(&limits));
        r.handled(&ev("b"), &limits);
        assert!(r.snapshot_due(&limits));
        match r.plan(&limits) {
            Plan::Rebuild { snapshot: None, events } => assert_eq!(events.len(), 2),
            _ => panic!("expected a replay of two events"),
        }
        r.snapshotted(Snapshot {
            bytes: Arc::from(&b"s"[..]),
            seq: Some(2),
        });
        r.handled(&ev("c"), &limits);
        match r.plan(&limits) {
            Plan::Rebuild {
                snapshot: Some(s),
                events,
            } => assert_eq!((&*s.bytes, events.len()), (&b"s"[..], 1)),
            _ => panic!("expected restore + one event"),
        }
        for n in ["d", "e", "f"] {
            r.handled(&ev(n), &limits);
        }
        assert!(matches!(r.plan(&limits), Plan::Lost(reason) if reason.contains("replay_max_events")));
        r.reset();
        assert!(matches!(r.plan(&limits), Plan::Rebuild { snapshot: None, events } if events.is_empty()));
    }
}
