//! An optional ring buffer of the most recent events, for debugging and for
//! late observers that want context.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::event::Event;

pub(crate) struct History {
    capacity: usize,
    events: Mutex<VecDeque<Event>>,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            capacity,
            events: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    pub fn push(&self, event: &Event) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() == self.capacity {
            events.pop_front();
        }
        events.push_back(event.clone());
    }

    /// The last `n` events, oldest first.
    pub fn last(&self, n: usize) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().skip(events.len().saturating_sub(n)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_oldest_first() {
        let h = History::new(3);
        for i in 0..5 {
            h.push(&Event::new(format!("e{i}"), serde_json::Value::Null));
        }
        let names: Vec<String> = h.last(10).iter().map(|e| e.name().to_owned()).collect();
        assert_eq!(names, ["e2", "e3", "e4"]);
        assert_eq!(h.last(1)[0].name(), "e4");
    }
}
