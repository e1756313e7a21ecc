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

/// Records read per step: bounds the memory of one batch. With the batch
/// read ahead (see [`Cursor`]) at most two are held.
const BATCH: usize = 1024;

/// One read's records, each with the reader's position right after it.
type Records = Vec<(Event, Option<LogPosition>)>;

/// A position in the log and the filter of one plugin's catch-up.
///
/// Reading overlaps handling: when a read fills a whole batch, the next
/// one starts at once on a blocking thread while the plugin handles the
/// batch just returned, so the log's decoding and the plugin's work run on
/// two cores instead of taking turns (catch-up was half idle). What is read
/// ahead is used only by a read starting exactly where it did, and cut to
/// that read's `upto`; a cursor moved in between drops it.
pub(crate) struct Cursor {
    dir: PathBuf,
    next: u64,
    /// Skip events older than this (nanoseconds since the epoch).
    since_nanos: u64,
    /// Events numbered this or later are read whatever their time.
    windowless_from: u64,
    patterns: Vec<Pattern>,
    /// Where the last batch's reader stopped, right after the record at
    /// `next - 1`: the next batch starts reading there instead of walking
    /// the segment from its start (which made catch-up quadratic in the
    /// position inside a segment).
    position: Option<LogPosition>,
    /// The batch being read ahead, from `(next, position)` as they were
    /// when it started.
    ahead: Option<Ahead>,
    /// Events the last read found removed by the log's retention while this
    /// cursor still needed them (`from..=to`), for the worker to announce.
    gap: Option<(u64, u64)>,
    /// Gaps ending before this were announced already (at the start).
    gaps_known_before: u64,
}

/// A read started ahead of its use.
struct Ahead {
    from: u64,
    position: Option<LogPosition>,
    /// The bound it read up to (a later read may ask for more).
    upto: u64,
    read: tokio::task::JoinHandle<Result<Read, LogError>>,
}

/// A read's records, and the events retention removed before them that it
/// needed (`from..=to`), if any.
type Read = (Records, Option<(u64, u64)>);

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
            windowless_from: u64::MAX,
            patterns,
            position: None,
            ahead: None,
            gap: None,
            gaps_known_before: 0,
        }
    }

    /// Events removed by retention that the last read skipped (`from..=to`):
    /// taken once.
    pub fn take_gap(&mut self) -> Option<(u64, u64)> {
        self.gap.take()
    }

    /// A gap ending before `seq` was announced already: not again.
    pub fn gaps_known_before(&mut self, seq: u64) {
        self.gaps_known_before = self.gaps_known_before.max(seq);
    }

    /// Starts at sequence number `seq` instead (after a kept snapshot).
    pub fn starting_at(mut self, seq: u64) -> Cursor {
        self.next = self.next.max(seq);
        self
    }

    /// Starts at `seq`, right after a kept snapshot: every event from there
    /// on is read, whatever its time. A `since:` window bounds only a
    /// catch-up with no state to resume; a snapshot needs all that follows
    /// it, or events logged while the plugin was away (or stamped with an
    /// old time) would be skipped and then passed by its next snapshot.
    pub fn resuming_at(mut self, seq: u64) -> Cursor {
        self.since_nanos = 0;
        self.starting_at(seq)
    }

    /// Whether a `since:` window bounds this cursor: a catch-up with no
    /// state to resume.
    pub fn windowed(&self) -> bool {
        self.since_nanos > 0
    }

    /// The last sequence number this cursor has gone past (read, or found
    /// nothing up to); 0 before any read.
    pub fn covered(&self) -> u64 {
        self.next.saturating_sub(1)
    }

    /// Reads the events numbered `seq` or later whatever their time: those
    /// accepted while the bus started (its start-up floor), new to a plugin
    /// installed then, which a `since:` window must not skip (start-up may
    /// take longer than the window).
    pub fn windowless_from(&mut self, seq: u64) {
        self.windowless_from = seq;
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

    /// Starts reading at most [`BATCH`] records from `(from, position)` up
    /// to `upto`, on a blocking thread.
    fn start_read(&self, from: u64, position: Option<LogPosition>, upto: u64) -> Ahead {
        let dir = self.dir.clone();
        let read = tokio::task::spawn_blocking(move || -> Result<Read, LogError> {
            let mut out = Vec::with_capacity(BATCH);
            let mut reader = LogReader::open(&dir, from)?.resume(position);
            while out.len() < BATCH {
                let Some(event) = reader.next_event().transpose()? else {
                    break;
                };
                if event.seq().unwrap_or(0) > upto {
                    break;
                }
                // Right after the record just taken, before reading on.
                out.push((event, reader.position()));
            }
            // Nothing at `from` (a read from 0 takes what the log has): were
            // the events there removed by retention while this catch-up ran?
            let skipped = out.first().is_none_or(|(e, _)| e.seq().unwrap_or(0) > from);
            let gap = if from > 0 && skipped {
                match crate::log::first_retained_seq(&dir)? {
                    Some(first) if first > from => Some((from, (first - 1).min(upto))),
                    _ => None,
                }
            } else {
                None
            };
            Ok((out, gap))
        });
        Ahead {
            from,
            position,
            upto,
            read,
        }
    }

    /// The next events for this plugin with sequence numbers up to `upto`
    /// (at most [`BATCH`] records read); empty when there are none left.
    pub async fn read(&mut self, upto: u64) -> Result<Vec<Event>, LogError> {
        // A batch with nothing for this plugin: read on (a loop, not a
        // recursion, however long the stretch without a match).
        loop {
            if self.next > upto {
                self.ahead = None;
                return Ok(Vec::new());
            }
            // The read ahead if it starts here (it may have read past
            // `upto`: cut below), else a read of its own.
            let ahead = match self.ahead.take() {
                Some(a) if a.from == self.next && a.position == self.position => a,
                _ => self.start_read(self.next, self.position, upto),
            };
            // What this read covers: up to its own bound, which a read
            // started ahead (for an earlier call) may have had lower.
            let bound = ahead.upto.min(upto);
            let (mut read, gap) = ahead
                .read
                .await
                .map_err(|e| LogError::Failed(format!("log reader task failed: {e}").into()))??;
            if let Some((from, to)) = gap
                && to >= self.gaps_known_before
                && from <= to
            {
                let from = from.max(self.gaps_known_before);
                self.gap = Some(self.gap.map_or((from, to), |(f, _)| (f, to)));
                self.gaps_known_before = to + 1;
            }
            let full = read.len() == BATCH;
            read.retain(|(e, _)| e.seq().unwrap_or(0) <= upto);
            let Some((last, at)) = read.last() else {
                // Nothing left up to `bound` (a gap at the end, or the end).
                self.next = bound.saturating_add(1);
                if bound < upto {
                    // Read on past the earlier bound, up to this one.
                    continue;
                }
                return Ok(Vec::new());
            };
            self.next = last.seq().unwrap_or(0) + 1;
            self.position = at.or(self.position);
            // A whole batch came back: more is likely; read it while this
            // one is handled.
            if full && self.next <= upto {
                self.ahead = Some(self.start_read(self.next, self.position, upto));
            }
            let (since, windowless_from) = (self.since_nanos, self.windowless_from);
            let events: Vec<Event> = read
                .into_iter()
                .map(|(e, _)| e)
                .filter(|e| {
                    let in_window = e.time_unix_nanos() >= since || e.seq().is_some_and(|seq| seq >= windowless_from);
                    in_window && self.patterns.iter().any(|p| p.matches(e.name()))
                })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Durability, LogOptions};
    use serde_json::json;

    /// A log in `dir` that never syncs (these tests read what was written).
    fn unsynced_log(dir: &std::path::Path, segment_bytes: u64) -> EventLog {
        let options = LogOptions {
            durability: Durability::Off,
            segment_bytes,
            ..LogOptions::default()
        };
        EventLog::open(dir, options).unwrap()
    }

    /// A read started ahead for an earlier, lower bound that finds nothing
    /// (a number with no record: an oversize plain emit, delivered live but
    /// never logged) stops at that bound: the next read goes on from there,
    /// not from past its own bound. Before, every event up to the later
    /// bound was skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_read_ahead_never_skips_past_its_own_bound() {
        #[cfg(feature = "failpoints")]
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let log = unsynced_log(dir.path(), LogOptions::default().segment_bytes);
        for i in 0..BATCH as u64 {
            log.append(&Event::new("kept", json!({ "i": i })), false);
        }
        let (hole, _) = log.append(&Event::new("kept", json!("x".repeat(crate::log::MAX_FRAME))), false);
        assert_eq!(hole, BATCH as u64 + 1);
        let mut last = 0;
        for i in 0..10u64 {
            last = log.append(&Event::new("kept", json!({ "after": i })), false).0;
        }
        log.wait_written(last).await.unwrap();
        let mut cursor = Cursor::new(&log, CatchUp::All, vec![Pattern::parse("kept").unwrap()]);
        // A whole batch, and a read ahead up to the hole alone.
        assert_eq!(cursor.read(hole).await.unwrap().len(), BATCH);
        assert!(cursor.ahead.is_some());
        let rest: Vec<u64> = cursor
            .read(u64::MAX)
            .await
            .unwrap()
            .iter()
            .filter_map(Event::seq)
            .collect();
        assert_eq!(rest, (hole + 1..=last).collect::<Vec<_>>());
        log.close();
    }

    /// Segments removed by retention while a catch-up runs (here: deleted
    /// between two reads) are a gap the cursor reports, with its range,
    /// instead of reading on from the first segment left as if nothing had
    /// been skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_removed_while_a_catch_up_runs_are_reported_as_a_gap() {
        #[cfg(feature = "failpoints")]
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let log = unsynced_log(dir.path(), 16 << 10);
        let mut last = 0;
        for i in 0..3 * BATCH as u64 {
            last = log.append(&Event::new("kept", json!({ "i": i })), false).0;
        }
        log.wait_written(last).await.unwrap();
        let mut cursor = Cursor::new(&log, CatchUp::All, vec![Pattern::parse("kept").unwrap()]);
        // Exactly one batch, nothing read ahead.
        let first = cursor.read(BATCH as u64).await.unwrap();
        assert_eq!(first.last().and_then(Event::seq), Some(BATCH as u64));
        assert_eq!(cursor.take_gap(), None);
        // "Retention" removes every segment that starts at or below 2,000.
        let mut removed_up_to = 0;
        let mut segments: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| {
                let path = e.unwrap().path();
                let seq = path.file_stem()?.to_str()?.parse::<u64>().ok()?;
                Some((seq, path))
            })
            .collect();
        segments.sort();
        for (seq, path) in &segments {
            if *seq <= 2000 {
                std::fs::remove_file(path).unwrap();
            } else if path.extension().is_some_and(|e| e == "seg") && removed_up_to == 0 {
                removed_up_to = seq - 1;
            }
        }
        assert!(removed_up_to > BATCH as u64, "{segments:?}");
        let next = cursor.read(u64::MAX).await.unwrap();
        assert_eq!(next.first().and_then(Event::seq), Some(removed_up_to + 1));
        assert_eq!(cursor.take_gap(), Some((BATCH as u64 + 1, removed_up_to)));
        assert_eq!(cursor.take_gap(), None, "taken once");
        log.close();
    }

    /// Reading ahead never loses, repeats or reorders an event: a read whose
    /// `upto` is short of what was read ahead is cut to it, the next read
    /// goes on from there, and a moved cursor reads from where it was moved.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reading_ahead_gives_every_event_once_in_order_up_to_each_reads_bound() {
        // Failpoints are process-wide: hold the scenario lock like every
        // other test that runs a log writer.
        #[cfg(feature = "failpoints")]
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let log = unsynced_log(dir.path(), LogOptions::default().segment_bytes);
        let (mut kept, mut last) = (Vec::new(), 0);
        for i in 0..5 * BATCH as u64 {
            let name = if i % 3 == 0 { "other" } else { "kept" };
            last = log.append(&Event::new(name, json!({ "i": i })), false).0;
            if name == "kept" {
                kept.push(last);
            }
        }
        log.wait_written(last).await.unwrap();
        let mut cursor = Cursor::new(&log, CatchUp::All, vec![Pattern::parse("kept").unwrap()]);
        let mut seen = Vec::new();
        let mut take = |batch: Vec<Event>, upto: u64| {
            assert!(batch.iter().all(|e| e.name() == "kept" && e.seq().unwrap() <= upto));
            seen.extend(batch.iter().map(|e| e.seq().unwrap()));
        };
        // One whole batch (the next is read ahead, up to 3 batches)...
        let cut = BATCH as u64 + BATCH as u64 / 2;
        take(cursor.read(3 * BATCH as u64).await.unwrap(), 3 * BATCH as u64);
        // ...then reads up to the middle of what was read ahead...
        loop {
            let batch = cursor.read(cut).await.unwrap();
            if batch.is_empty() {
                break;
            }
            take(batch, cut);
        }
        // ...then the rest.
        loop {
            let batch = cursor.read(u64::MAX).await.unwrap();
            if batch.is_empty() {
                break;
            }
            take(batch, u64::MAX);
        }
        assert_eq!(seen, kept, "every kept event once, in order");
        // Moved back while the next batch is being read ahead: that batch
        // is dropped, the read starts where the cursor was moved to.
        let mut cursor = Cursor::new(&log, CatchUp::All, vec![Pattern::parse("kept").unwrap()]);
        assert!(!cursor.read(u64::MAX).await.unwrap().is_empty());
        assert!(cursor.ahead.is_some());
        cursor.move_to(kept[10]);
        let again = cursor.read(kept[12]).await.unwrap();
        let seqs: Vec<u64> = again.iter().map(|e| e.seq().unwrap()).collect();
        assert_eq!(seqs, kept[10..=12]);
        log.close();
    }
}
