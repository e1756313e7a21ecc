//! What the bus does when the event log's retention removes history: the
//! request journal drops the records that no handling can ask for again.
//!
//! A request's record is needed while its event may be handled again: by a
//! restart's catch-up or a trap recovery (from a kept plugin snapshot, at
//! or above the log's retention floor), by `plugbus replay` (events the log
//! still holds), or by a redrive (a dead letter). So once retention has
//! removed segments, the records of events numbered below both the log's
//! first retained event and its retention floor are dropped, except those
//! of live dead letters and those of events a plugin's worker may still
//! hand to its plugin (a rebuild's replay after a trap covers every event
//! since the plugin's last snapshot, or since its instance started when
//! it keeps no state). A plugin not loaded at that moment keeps the
//! records of its dead letters as its dead-letter file lists them (all of
//! its records when that file cannot be read).
//!
//! The compaction runs on a blocking thread, never on the log writer's
//! (which only signals), one at a time; requests being recorded meanwhile
//! are not held up while old records are copied (see
//! [`RequestJournal::compact`](crate::http::RequestJournal::compact)).
//! [`Bus::shutdown`](crate::Bus::shutdown) waits for those started: once it
//! returns, the journal is not rewritten behind the caller's back.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Weak};

use std::sync::Mutex;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::bus::Shared;
use crate::dead_letter::DeadLetters;
use crate::http::RequestKey;
use crate::log::EventLog;
use crate::sync::lock;

/// The compactions started and not yet waited for; the bus owns it, the
/// log's retention hook holds a handle.
#[derive(Default)]
pub(crate) struct Compactions(Mutex<Vec<JoinHandle<()>>>);

impl Compactions {
    fn start(&self, runtime: &Handle, work: impl FnOnce() + Send + 'static) {
        let mut running = lock(&self.0);
        running.retain(|h| !h.is_finished());
        running.push(runtime.spawn_blocking(work));
    }

    /// Waits for the compactions started so far.
    pub(crate) async fn settle(&self) {
        let running = std::mem::take(&mut *lock(&self.0));
        for h in running {
            if let Err(e) = h.await {
                tracing::error!(error = %e, "a request journal compaction failed to finish");
            }
        }
    }
}

/// Compacts the request journal each time the log's retention removes
/// segments (a bus with a log whose plugins keep their state).
pub(crate) fn watch(shared: &Arc<Shared>, log: &EventLog) {
    if shared.state_log().is_none() || shared.http.journal.in_memory() {
        return;
    }
    let weak = Arc::downgrade(shared);
    let runtime = shared.runtime.clone();
    // The hook holds the list, never the bus: the last handle on the bus
    // must not be dropped on the log writer's thread.
    let compactions = shared.compactions.clone();
    log.on_retained(move |first_retained| {
        let weak = weak.clone();
        // The hook runs on the log writer's thread: hand the work over.
        compactions.start(&runtime, move || compact(&weak, first_retained));
    });
}

/// Drops the journal's records below what the log and the kept snapshots
/// still need.
fn compact(shared: &Weak<Shared>, first_retained: u64) {
    // `sleep(ms)`: a slow compaction (a large journal, a busy disk).
    let _ = crate::failpoint::hit("bus.retention.compact");
    let Some(shared) = shared.upgrade() else { return };
    let Some(log) = shared.state_log() else { return };
    let retention_floor = log.status().retention_floor;
    let floor = match retention_floor {
        0 => first_retained,
        snapshots => first_retained.min(snapshots),
    };
    let loaded: HashMap<String, Arc<DeadLetters>> = lock(&shared.plugins)
        .iter()
        .map(|(name, h)| (name.clone(), h.dead_letters.clone()))
        .collect();
    let dir = log.dir().to_owned();
    // Unloaded plugins' letters come from their files, read once each.
    let unloaded = RefCell::new(HashMap::<String, Option<HashSet<String>>>::new());
    // What the workers may still hand to their plugins, read once, after
    // the journal found the records below the floor (a record made since
    // is not among them) and before any letter is looked at (an event whose
    // letter is not written yet is still held by its worker then).
    let held = std::cell::OnceCell::<HashMap<String, u64>>::new();
    let keep = |key: &RequestKey, seq: u64| {
        let held = held.get_or_init(|| held_by_workers(&shared, None));
        if held.get(&key.plugin).is_some_and(|floor| seq >= *floor) {
            return true;
        }
        let lettered = match loaded.get(&key.plugin) {
            Some(letters) => letters.contains(&key.event),
            None => unloaded
                .borrow_mut()
                .entry(key.plugin.clone())
                .or_insert_with(|| letter_ids(&dir, &key.plugin))
                .as_ref()
                .is_none_or(|ids| ids.contains(&key.event)),
        };
        // A letter removed since the floors were read was redriven: its
        // worker lowered its floor to the event before, so the plugin's
        // floor read now holds the record if a rebuild may replay it.
        lettered
            || held_by_workers(&shared, Some(&key.plugin))
                .get(&key.plugin)
                .is_some_and(|floor| seq >= *floor)
    };
    let result = shared.http.journal.compact(floor, keep);
    match result {
        Ok(done) if done.removed > 0 => tracing::info!(
            floor,
            kept = done.kept,
            removed = done.removed,
            bytes_before = done.bytes_before,
            bytes_after = done.bytes_after,
            "request journal compacted after log retention"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "request journal compaction failed; the journal is unchanged"),
    }
}

/// Per plugin, the lowest sequence number of an event one of its workers
/// may still hand to it: a rebuild's replay after a trap (the events since
/// its snapshot, or since its instance started), a batch run again, events
/// read from the log and not handled yet. Their requests must be answered
/// from the journal then, whatever the log's retention removed.
/// `only`: that plugin's alone.
fn held_by_workers(shared: &Shared, only: Option<&str>) -> HashMap<String, u64> {
    let mut held = HashMap::<String, u64>::new();
    for (plugin, worker) in lock(&shared.workers).iter() {
        if only.is_some_and(|only| only != plugin) {
            continue;
        }
        let Some(floor) = worker.upgrade().and_then(|w| w.journal_floor()) else {
            continue;
        };
        held.entry(plugin.clone())
            .and_modify(|f| *f = (*f).min(floor))
            .or_insert(floor);
    }
    held
}

/// The event ids of `plugin`'s live dead letters in the log directory
/// `dir`; `None` when they cannot be read (keep everything).
fn letter_ids(dir: &Path, plugin: &str) -> Option<HashSet<String>> {
    match crate::dead_letter::read_dead_letters(dir, Some(plugin)) {
        Ok(letters) => Some(letters.into_iter().map(|l| l.event.id).collect()),
        Err(e) => {
            tracing::warn!(plugin, error = %e, "dead letters unreadable: the plugin's journaled requests are all kept");
            None
        }
    }
}
