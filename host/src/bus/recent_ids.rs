//! The window of recently ingested event ids that makes an idempotent
//! publish ([`Bus::publish_once_all`](crate::Bus::publish_once_all)) skip a
//! sender's retry of events it already took.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use crate::log::{EventLog, LogReader};

/// Ids remembered. A sender retries a request within seconds or minutes
/// (an OTLP exporter's back-off gives up after about a minute); 32,768 ids
/// cover that many events ingested since, at ~100 bytes per id (3 MiB) of
/// memory. A retry arriving after more newer events than this is published
/// again: the documented limit of the de-duplication.
pub const RECENT_IDS: usize = 32_768;

/// Ids in arrival order, with a set for lookups; at most `capacity`.
pub(crate) struct RecentIds {
    set: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
    capacity: usize,
    /// Whether the ids of the log's tail were read in (lazily, at the first
    /// idempotent publish: a bus that never ingests never pays for it).
    seeded: bool,
}

impl RecentIds {
    pub(crate) fn new(capacity: usize) -> RecentIds {
        RecentIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            seeded: false,
        }
    }

    /// Remembers `id`; false when it is remembered already.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        let id: Arc<str> = Arc::from(id);
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
        true
    }

    /// Forgets `ids` (their publish failed: a retry must not be skipped),
    /// in one pass over the window however many they are.
    pub(crate) fn forget<'a>(&mut self, ids: impl IntoIterator<Item = &'a str>) {
        let mut removed = false;
        for id in ids {
            removed |= self.set.remove(id);
        }
        if removed {
            let set = &self.set;
            self.order.retain(|kept| set.contains(kept));
        }
    }

    /// Reads the ids of the last `capacity` events written to `log`, once:
    /// a retry reaching a restarted host is still recognised. Events still
    /// queued for the writer were published by this process and are not
    /// in the window only if they were not published idempotently. A log
    /// that cannot be read is logged and skipped (the window starts empty).
    pub(crate) fn seed_from(&mut self, log: &EventLog) {
        if std::mem::replace(&mut self.seeded, true) {
            return;
        }
        let last = log.last_seq();
        let from = last.saturating_sub(self.capacity as u64 - 1).max(1);
        let reader = match LogReader::open(log.dir(), from) {
            Ok(reader) => reader,
            Err(e) => {
                tracing::warn!(log = %log.dir().display(), "cannot read the log's recent ids for de-duplication: {e}");
                return;
            }
        };
        for record in reader {
            match record {
                Ok(record) if record.seq <= last => {
                    self.insert(&record.id);
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(log = %log.dir().display(), "reading the log's recent ids for de-duplication stopped: {e}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_newest_ids_and_forgets_on_request() {
        let mut ids = RecentIds::new(3);
        assert!(ids.insert("a") && ids.insert("b") && ids.insert("c"));
        assert!(!ids.insert("a"), "a repeat is recognised");
        assert!(ids.insert("d"), "a fourth id pushes the oldest out");
        assert!(ids.insert("a"), "a is forgotten once three newer came");
        ids.forget(["d"]);
        assert!(ids.insert("d"), "a forgotten id is new again");
        assert_eq!(ids.order.len(), 3);
        assert_eq!(ids.set.len(), 3);
    }
}
