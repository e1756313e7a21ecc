//! The subscription index: which handlers an event name reaches.
//!
//! An immutable snapshot, swapped atomically (`arc-swap`) on every `on`,
//! `off`, load and unload, so `emit` reads it without a lock and never
//! contends with subscribers. Exact names go into a hash index and wildcard
//! patterns into a short list, so an emit costs one hash lookup plus the
//! wildcard patterns, however many unrelated exact subscriptions exist.

use std::collections::HashMap;
use std::sync::Arc;

use crate::bus::native::{AsyncHandler, SyncHandler};
use crate::pattern::Pattern;
use crate::plugin::worker::PluginHandle;

/// What a subscription leads to.
#[derive(Clone)]
pub(crate) enum Target {
    Sync(Arc<SyncHandler>),
    Async(Arc<AsyncHandler>),
    Plugin(Arc<PluginHandle>),
}

/// One subscription. `seq` identifies the subscriber: a plugin's patterns
/// all share its `seq`, so an event matching several of them is delivered
/// once. Delivery order is [`order`](Entry::order): higher `priority` first,
/// then registration order (`seq`).
#[derive(Clone)]
pub(crate) struct Entry {
    pub seq: u64,
    /// Native handlers' priority (0 by default; plugins are always 0: they
    /// run on their own queues, so their order only fixes who is offered an
    /// event first).
    pub priority: i32,
    pub target: Target,
}

impl Entry {
    /// The delivery-order key: smaller runs first.
    fn order(&self) -> (std::cmp::Reverse<i32>, u64) {
        (std::cmp::Reverse(self.priority), self.seq)
    }
}

#[derive(Clone, Default)]
pub(crate) struct Registry {
    exact: HashMap<String, Vec<Entry>>,
    wildcard: Vec<(Pattern, Entry)>,
}

impl Registry {
    /// Adds `entry` under each pattern, keeping every list sorted by
    /// delivery order (a priority, or a swapped plugin keeping its
    /// predecessor's seq, puts inserts anywhere, not only at the end).
    pub fn insert(&mut self, patterns: &[Pattern], entry: Entry) {
        let key = entry.order();
        for p in patterns {
            if p.is_exact() {
                let list = self.exact.entry(p.as_str().to_owned()).or_default();
                let at = list.partition_point(|e| e.order() <= key);
                list.insert(at, entry.clone());
            } else {
                let at = self.wildcard.partition_point(|(_, e)| e.order() <= key);
                self.wildcard.insert(at, (p.clone(), entry.clone()));
            }
        }
    }

    /// Removes every pattern of subscriber `seq`; true if there was one.
    pub fn remove(&mut self, seq: u64) -> bool {
        let before = self.len();
        self.exact.retain(|_, list| {
            list.retain(|e| e.seq != seq);
            !list.is_empty()
        });
        self.wildcard.retain(|(_, e)| e.seq != seq);
        self.len() != before
    }

    fn len(&self) -> usize {
        self.exact.values().map(Vec::len).sum::<usize>() + self.wildcard.len()
    }

    /// Calls `f` for each subscriber matching `name`, once each, in delivery
    /// order (priority, then registration). Allocates nothing.
    pub fn for_each_match(&self, name: &str, mut f: impl FnMut(&Entry)) {
        let mut exact = self.exact.get(name).map_or(&[][..], Vec::as_slice).iter().peekable();
        let mut wild = self
            .wildcard
            .iter()
            .filter(|(p, _)| p.matches(name))
            .map(|(_, e)| e)
            .peekable();
        let mut last = None;
        loop {
            let next = match (exact.peek(), wild.peek()) {
                (Some(a), Some(b)) if a.order() <= b.order() => exact.next(),
                (_, Some(_)) => wild.next(),
                (Some(_), None) => exact.next(),
                (None, None) => break,
            };
            let Some(entry) = next else { break };
            if last != Some(entry.seq) {
                last = Some(entry.seq);
                f(entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::native::SyncHandler;

    fn entry(seq: u64) -> Entry {
        prioritised(seq, 0)
    }

    fn prioritised(seq: u64, priority: i32) -> Entry {
        Entry {
            seq,
            priority,
            target: Target::Sync(Arc::new(SyncHandler {
                id: seq,
                f: Box::new(|_| {}),
                once: None,
            })),
        }
    }

    fn matches(r: &Registry, name: &str) -> Vec<u64> {
        let mut seqs = vec![];
        r.for_each_match(name, |e| seqs.push(e.seq));
        seqs
    }

    #[test]
    fn merges_exact_and_wildcards_in_order_without_duplicates() {
        let mut r = Registry::default();
        let p = |s: &str| Pattern::parse(s).unwrap();
        r.insert(&[p("*")], entry(1));
        r.insert(&[p("llm.call")], entry(2));
        r.insert(&[p("llm.*"), p("llm.call")], entry(3));
        r.insert(&[p("other")], entry(4));
        r.insert(&[p("llm.**")], entry(5));
        assert_eq!(matches(&r, "llm.call"), vec![1, 2, 3, 5]);
        assert_eq!(matches(&r, "other"), vec![1, 4]);
        assert_eq!(matches(&r, "llm"), vec![1]);
        assert!(r.remove(3));
        assert!(!r.remove(3));
        assert_eq!(matches(&r, "llm.call"), vec![1, 2, 5]);
        // Re-inserting under an old seq (a hot swap) keeps its place.
        r.insert(&[p("llm.call")], entry(3));
        assert_eq!(matches(&r, "llm.call"), vec![1, 2, 3, 5]);
    }

    #[test]
    fn higher_priority_first_then_registration_order() {
        let mut r = Registry::default();
        let p = |s: &str| Pattern::parse(s).unwrap();
        r.insert(&[p("tool.*")], prioritised(1, 0));
        r.insert(&[p("tool.called")], prioritised(2, 10));
        r.insert(&[p("**"), p("tool.called")], prioritised(3, 10));
        r.insert(&[p("tool.called")], prioritised(4, -5));
        r.insert(&[p("tool.*")], prioritised(5, 0));
        assert_eq!(matches(&r, "tool.called"), vec![2, 3, 1, 5, 4]);
        assert_eq!(matches(&r, "tool.done"), vec![3, 1, 5]);
    }
}
