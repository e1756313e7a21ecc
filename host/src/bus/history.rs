//! An optional ring buffer of the most recent events, for debugging and for
//! late observers that want context.

use std::sync::Mutex;

use crate::event::Event;
use crate::ring::SizedRing;

pub(crate) struct History {
    capacity: usize,
    max_bytes: usize,
    kept: Mutex<SizedRing<Event>>,
}

/// Memory the history may hold, whatever its count: 10,000 events of
/// ~6 KiB. Events arrive from outside (`POST /events`: 1 MiB of small
/// numbers parses into ~18 MiB), so a count alone bounds nothing.
pub(crate) const HISTORY_BYTES: usize = 64 << 20;

impl History {
    /// At most `capacity` events and [`HISTORY_BYTES`] of them.
    pub fn new(capacity: usize) -> History {
        History::bounded(capacity, HISTORY_BYTES)
    }

    fn bounded(capacity: usize, max_bytes: usize) -> History {
        History {
            capacity,
            max_bytes,
            kept: Mutex::new(SizedRing::with_capacity(capacity.min(1 << 16))),
        }
    }

    /// Keeps `event`, of `size` bytes ([`Event::approx_bytes`], measured
    /// by the caller before it takes the publish lock).
    pub fn push(&self, event: &Event, size: usize) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.push(event.clone(), size, self.capacity, self.max_bytes);
    }

    /// The last `n` events, oldest first.
    pub fn last(&self, n: usize) -> Vec<Event> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().skip(kept.len().saturating_sub(n)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_oldest_first() {
        let h = History::new(3);
        for i in 0..5 {
            let e = Event::new(format!("e{i}"), serde_json::Value::Null);
            h.push(&e, e.approx_bytes());
        }
        let names: Vec<String> = h.last(10).iter().map(|e| e.name().to_owned()).collect();
        assert_eq!(names, ["e2", "e3", "e4"]);
        assert_eq!(h.last(1)[0].name(), "e4");
    }

    #[test]
    fn the_bytes_are_bounded_as_well_as_the_count() {
        let big = || Event::new("big", serde_json::json!(vec![0; 10_000]));
        let h = History::bounded(1000, 3 * big().approx_bytes());
        for _ in 0..10 {
            let e = big();
            h.push(&e, e.approx_bytes());
        }
        assert_eq!(h.last(100).len(), 3, "three fit in the bytes");
        let huge = Event::new("huge", serde_json::json!(vec![0; 100_000]));
        h.push(&huge, huge.approx_bytes());
        assert_eq!(h.last(100).len(), 1, "the newest is kept whatever its size");
        assert_eq!(h.last(1)[0].name(), "huge");
    }
}
