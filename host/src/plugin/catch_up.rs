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
//! the originals are in the log), as in any replay.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::event::Event;
use crate::log::{EventLog, LogError, LogReader};
use crate::manifest::CatchUp;
use crate::pattern::Pattern;

/// Records read per step: bounds the memory of one batch.
const BATCH: usize = 1024;

/// A position in the log and the filter of one plugin's catch-up.
///
/// It keeps one [`LogReader`] open across calls, so reading the log costs
/// the same per event however far into a segment it is (reopening a reader
/// walks the frame headers from its segment's start). A reader sees each
/// segment as it was when it opened it: when it runs dry it is dropped, and
/// the next call opens a new one at the next sequence number, which then
/// sees what was appended since.
pub(crate) struct Cursor {
    dir: PathBuf,
    next: u64,
    /// Skip events older than this (nanoseconds since the epoch).
    since_nanos: u64,
    patterns: Vec<Pattern>,
    /// The open reader, positioned at `next`.
    reader: Option<LogReader>,
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
            reader: None,
        }
    }

    /// Starts at sequence number `seq` instead (after a kept snapshot).
    pub fn starting_at(mut self, seq: u64) -> Cursor {
        self.next = self.next.max(seq);
        self.reader = None;
        self
    }

    /// Back to the start of the log (a kept snapshot could not be used).
    pub fn rewind(&mut self) {
        self.next = 0;
        self.since_nanos = 0;
        self.reader = None;
    }

    /// The next events for this plugin with sequence numbers up to `upto`;
    /// empty when there are none left. Reads batches of [`BATCH`] records
    /// until one holds an event for the plugin, or the log ends.
    pub async fn read(&mut self, upto: u64) -> Result<Vec<Event>, LogError> {
        loop {
            if self.next > upto {
                return Ok(Vec::new());
            }
            let (dir, from, reader) = (self.dir.clone(), self.next, self.reader.take());
            let kept = reader.is_some();
            let (reader, records, dry) = tokio::task::spawn_blocking(move || read_batch(&dir, from, reader, upto))
                .await
                .map_err(|e| LogError::Failed(format!("log reader task failed: {e}").into()))??;
            // A reader that ran dry is reopened next time, to see what was
            // appended since it opened.
            self.reader = if dry { None } else { Some(reader) };
            if records.is_empty() && kept {
                // A kept reader saw nothing more: only a new one can tell
                // whether the log holds more up to `upto`.
                continue;
            }
            let Some(last) = records.last() else {
                // Nothing left up to `upto` (a gap at the end, or the end).
                self.next = upto + 1;
                return Ok(Vec::new());
            };
            self.next = last.seq + 1;
            let since = self.since_nanos;
            let events: Vec<Event> = records
                .into_iter()
                .filter(|r| r.time_unix_nanos >= since && self.patterns.iter().any(|p| p.matches(&r.name)))
                .map(crate::log::Record::into_event)
                .collect();
            if !events.is_empty() {
                return Ok(events);
            }
            // A batch with nothing for this plugin: read on.
        }
    }
}

/// Up to [`BATCH`] records from `from` to `upto`, from `reader` (or a new
/// one at `from`). Returns the reader, the records, and whether it ran dry
/// (reached the end of what it saw) before `upto`.
fn read_batch(
    dir: &std::path::Path,
    from: u64,
    reader: Option<LogReader>,
    upto: u64,
) -> Result<(LogReader, Vec<crate::log::Record>, bool), LogError> {
    let mut reader = match reader {
        Some(reader) => reader,
        None => LogReader::open(dir, from)?,
    };
    let mut out = Vec::new();
    while out.len() < BATCH {
        match reader.next() {
            None => return Ok((reader, out, true)),
            Some(record) => {
                let record = record?;
                if record.seq > upto {
                    // Past the cut: this record is read again next time,
                    // by a new reader.
                    return Ok((reader, out, true));
                }
                out.push(record);
            }
        }
    }
    Ok((reader, out, false))
}

/// What a worker needs to catch up, and how it talks to the bus installing it.
pub(crate) struct Plan {
    pub log: EventLog,
    pub cursor: Cursor,
    /// Sent when phase 1 is done: the bus may register the plugin.
    pub ready: oneshot::Sender<()>,
    /// The cut, once registered.
    pub cut: oneshot::Receiver<u64>,
}
