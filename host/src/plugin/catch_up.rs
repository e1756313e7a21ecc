//! Catch-up: a plugin loaded with `replay = "all"` or `"since:<duration>"`
//! (manifest) on a bus with an event log handles the logged history before
//! its live events, with no gap and no duplicate, while emits continue.
//!
//! Two phases, both on the plugin's worker (so traps during catch-up are
//! recovered like any other):
//! 1. before the plugin is registered, it reads the log up to what is
//!    written, in batches, until nothing new is left: the bulk of history;
//! 2. the bus then registers it under the publish lock and notes the last
//!    sequence number handed out there, the *cut*: events after it reach
//!    the plugin's queue, events up to it are read from the log (after
//!    waiting for the writer to reach it). The stretch between the two
//!    phases is what was published meanwhile, so the queue does not fill.
//!
//! Follow-ups and log lines are silenced during catch-up (it is history;
//! the originals are in the log), as in any replay; except for the events
//! accepted while the bus was starting (`bus::startup`), which the plugin
//! handles there for the first time.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::event::Event;
use crate::log::{EventLog, LogError, LogPosition, LogReader};
use crate::manifest::CatchUp;
use crate::pattern::Pattern;

/// Records read per step: bounds the memory of one batch.
const BATCH: usize = 1024;

/// A position in the log and the filter of one plugin's catch-up.
pub(crate) struct Cursor {
    dir: PathBuf,
    next: u64,
    /// Skip events older than this (nanoseconds since the epoch).
    since_nanos: u64,
    patterns: Vec<Pattern>,
    /// Where the last batch's reader stopped, right after the record at
    /// `next - 1`: the next batch starts reading there instead of walking
    /// the segment from its start (which made catch-up quadratic in the
    /// position inside a segment).
    position: Option<LogPosition>,
}

impl Cursor {
    /// A cursor at the start of what `mode` asks for.
    pub fn new(log: &EventLog, mode: CatchUp, patterns: Vec<Pattern>) -> Cursor {
        let since_nanos = match mode {
            CatchUp::Since(age) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
                u64::try_from(now.saturating_sub(age).as_nanos()).unwrap_or(0)
            }
            CatchUp::All | CatchUp::None => 0,
        };
        Cursor {
            dir: log.dir().to_owned(),
            next: 0,
            since_nanos,
            patterns,
            position: None,
        }
    }

    /// Starts at sequence number `seq` instead (after a kept snapshot).
    pub fn starting_at(mut self, seq: u64) -> Cursor {
        self.next = self.next.max(seq);
        self
    }

    /// Moves to sequence number `seq`, back or forth.
    pub fn move_to(&mut self, seq: u64) {
        self.next = seq;
        self.position = None;
    }

    /// Back to the start of the log (a kept snapshot could not be used).
    pub fn rewind(&mut self) {
        self.next = 0;
        self.since_nanos = 0;
        self.position = None;
    }

    /// The next events for this plugin with sequence numbers up to `upto`
    /// (at most [`BATCH`] records read); empty when there are none left.
    pub async fn read(&mut self, upto: u64) -> Result<Vec<Event>, LogError> {
        // A batch with nothing for this plugin: read on (a loop, not a
        // recursion, however long the stretch without a match).
        loop {
            if self.next > upto {
                return Ok(Vec::new());
            }
            let (dir, from, position) = (self.dir.clone(), self.next, self.position);
            let read = move || -> Result<(Vec<Event>, Option<LogPosition>), LogError> {
                let mut out = Vec::new();
                let mut reader = LogReader::open(&dir, from)?.resume(position);
                let mut at = None;
                while out.len() < BATCH {
                    let Some(event) = reader.next_event().transpose()? else {
                        break;
                    };
                    if event.seq().unwrap_or(0) > upto {
                        break;
                    }
                    out.push(event);
                    // Right after the record just taken, before reading on.
                    at = reader.position();
                }
                Ok((out, at))
            };
            let (read, at) = tokio::task::spawn_blocking(read)
                .await
                .map_err(|e| LogError::Failed(format!("log reader task failed: {e}").into()))??;
            self.position = at.or(self.position);
            let Some(last) = read.last() else {
                // Nothing left up to `upto` (a gap at the end, or the end).
                self.next = upto + 1;
                return Ok(Vec::new());
            };
            self.next = last.seq().unwrap_or(0) + 1;
            let since = self.since_nanos;
            let events: Vec<Event> = read
                .into_iter()
                .filter(|e| e.time_unix_nanos() >= since && self.patterns.iter().any(|p| p.matches(e.name())))
                .collect();
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }
}

/// What a worker needs to catch up, and how it talks to the bus installing it.
pub(crate) struct Plan {
    pub log: EventLog,
    pub cursor: Cursor,
    /// Sent when phase 1 is done: the bus may register the plugin.
    pub ready: oneshot::Sender<()>,
    /// The cut, once registered.
    pub cut: oneshot::Receiver<u64>,
    /// A plugin with `state` starting on this log for the first time: its
    /// initial state is kept as a snapshot at the log's end *before* it is
    /// registered, and it reads the events after that from the log up to
    /// the cut. A crash at any point after its registration restarts it
    /// from that snapshot, caught up from the log: an event accepted while
    /// its first snapshot was being written is not skipped as if the
    /// plugin were new (found by the long model checker, seed 1918).
    /// `Some(Some(seq))`: the snapshot is at `seq` instead of the log's
    /// end (a plugin installed while the bus starts: just before the
    /// start-up floor, see `bus::startup`).
    pub initial_snapshot: Option<Option<u64>>,
    /// The start-up floor, for a plugin installed while the bus starts:
    /// events from it on were accepted in this run before the plugin was
    /// live, so they are handled as live ones (follow-ups and logs not
    /// silenced), not as history.
    pub live_from: Option<u64>,
}
