//! Dead letters: the events that made a plugin fail hard, kept per plugin so
//! that they can be looked at and sent again once the plugin is fixed.
//!
//! The event that trapped is left out of the replay that rebuilds the
//! plugin's state (it would trap again), so it lands here instead of being
//! lost. A letter is keyed by the event's id: an event recorded twice (the
//! same poison event met again by a catch-up from the log) is one letter.
//!
//! # The file: a journal
//! With an event log, `<log dir>/dead-letters/<plugin>.jsonl` is the record
//! that survives restarts (what `plugbus dlq list` reads). It is a journal
//! of JSON lines, each appended and synced (unless the log's durability is
//! `off`) before the call returns:
//! - a letter: a [`DeadLetter`] object;
//! - a removal: `{"removed": "<event id>"}`, written by a redrive once the
//!   letter's outcome is known and, for a plugin with `state`, kept in a
//!   persisted snapshot (see `plugin::recovery`).
//!
//! Reading folds the lines: the live letters are those recorded and not
//! removed, oldest first. A last line cut short by a crash is ignored (and
//! cut off before the next append); a damaged line elsewhere is skipped with
//! an error naming the file and line, never the whole file. The journal is
//! compacted (rewritten with the live letters only, to a temporary file that
//! is synced and renamed) once removals outnumber the live letters.
//!
//! In memory the store keeps the id of every live letter (so the worker can
//! tell a dead-lettered event in a catch-up) and the newest [`MAX_KEPT`]
//! letters in full (for [`Bus::dead_letters`](crate::Bus::dead_letters)); a
//! redrive reads them all from the file.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::failpoint;
use crate::log::Record;
use crate::outcome::{Failure, Outcome};

/// Dead letters kept in full in memory per plugin: the newest 1000. A
/// plugin that fails more often than that is quarantined long before; with
/// a log the file keeps every one (and a redrive reads them from it).
/// Without a log these are all there is.
pub const MAX_KEPT: usize = 1000;

/// The folder of the log directory holding dead-letter files.
pub const DIR: &str = "dead-letters";

/// Journal lines of removals at which the journal is rewritten, at least:
/// below it a compaction would cost more than the lines it saves.
const COMPACT_MIN_REMOVED: usize = 64;

/// One event that failed a plugin hard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The plugin it failed.
    pub plugin: String,
    /// The failure kind (`out_of_fuel`, `deadline`, `panic`, …).
    pub failure: String,
    /// The failure, described (bounded like all guest text).
    pub reason: String,
    /// When it failed, nanoseconds since the Unix epoch.
    pub failed_at_unix_nanos: u64,
    /// The event, with its sequence number.
    pub event: Record,
}

impl DeadLetter {
    pub(crate) fn new(plugin: &str, event: &Event, failure: &Failure) -> DeadLetter {
        DeadLetter::now(plugin, event, failure.kind(), failure.to_string())
    }

    /// A letter failing now, of kind `failure`, described by `reason`.
    fn now(plugin: &str, event: &Event, failure: &str, reason: String) -> DeadLetter {
        DeadLetter {
            plugin: plugin.to_owned(),
            failure: failure.to_owned(),
            reason,
            failed_at_unix_nanos: crate::event::now_nanos(),
            event: Record::from_event(event),
        }
    }

    /// The letter of an event NATS gives up after `deliveries` deliveries
    /// (`max_deliver`) without a hard failure: failure kind
    /// `max_deliveries`, the reason naming the last delivery's outcome.
    #[cfg(feature = "nats")]
    pub(crate) fn given_up(plugin: &str, event: &Event, deliveries: i64, last: &str) -> DeadLetter {
        let reason = format!("NATS gave it up after {deliveries} deliveries; the last: {last}");
        DeadLetter::now(plugin, event, "max_deliveries", reason)
    }
}

/// A journal line: a removal or a letter.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Removed { removed: String },
    Letter(Box<DeadLetter>),
}

/// What [`Bus::redrive`](crate::Bus::redrive) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Redrive {
    /// Dead letters sent to the plugin again.
    pub redriven: u64,
    /// Handled this time.
    pub ok: u64,
    /// Answered with an `Err` (handled; not dead letters).
    pub errors: u64,
    /// Failed hard again: they stay dead letters.
    pub failed: u64,
    /// Not delivered (queue full, quarantined, unloaded): they stay dead letters.
    pub dropped: u64,
    /// On NATS: letters another redrive (on any host) was sending, or had
    /// handled since this one listed them: left to it.
    pub claimed_elsewhere: u64,
    /// On NATS: handled, but a follow-up they emitted was not stored in the
    /// stream: they stay dead letters.
    pub follow_ups_not_stored: u64,
}

impl Redrive {
    /// Counts one redriven letter's outcome; returns whether it was
    /// handled (ok, or a guest `Err`). A letter not delivered (queue full,
    /// quarantined, unloaded) or failing hard again stays a dead letter.
    pub(crate) fn count(&mut self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Error(_) => self.errors += 1,
            Outcome::Failed(_) => self.failed += 1,
            Outcome::Dropped(_) => self.dropped += 1,
        }
        matches!(outcome, Outcome::Ok | Outcome::Error(_))
    }
}

/// Why the dead letters could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeadLetterError {
    /// The file or directory could not be read or written.
    #[error("{}: {reason}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        reason: String,
    },
    /// The stream's dead-letter bucket on NATS could not be read or written.
    #[error("NATS bucket `{bucket}`: {reason}")]
    Nats {
        /// The key-value bucket.
        bucket: String,
        /// What the server said.
        reason: String,
    },
    /// A line other than the last one is not a letter or a removal.
    #[error("{}:{line}: {reason}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The line number (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// The journal read back.
struct Folded {
    /// Live letters, oldest first.
    letters: Vec<DeadLetter>,
    /// Removal lines.
    removed: usize,
    /// Damaged lines other than the last: skipped.
    damaged: Vec<DeadLetterError>,
    /// Byte length of the whole lines (a torn last line excluded).
    clean_len: u64,
}

/// Reads and folds one journal. `Ok(None)` when there is no file.
fn fold(path: &Path) -> Result<Option<Folded>, DeadLetterError> {
    let io = |e: std::io::Error| DeadLetterError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut order: Vec<String> = Vec::new();
    let mut live: HashMap<String, DeadLetter> = HashMap::new();
    let mut out = Folded {
        letters: Vec::new(),
        removed: 0,
        damaged: Vec::new(),
        clean_len: 0,
    };
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            break;
        }
        number += 1;
        let whole = line.last() == Some(&b'\n');
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            if whole {
                out.clean_len += n as u64;
            }
            continue;
        }
        match serde_json::from_slice::<Line>(text) {
            // A last line without its newline was cut short by a crash, even
            // when what is there parses: the append was not acknowledged.
            _ if !whole => {
                tracing::warn!(file = %path.display(), line = number, bytes = n, "dead letters: a torn last line is ignored");
                break;
            }
            Ok(Line::Letter(letter)) => {
                if let std::collections::hash_map::Entry::Vacant(slot) = live.entry(letter.event.id.clone()) {
                    order.push(letter.event.id.clone());
                    slot.insert(*letter);
                }
            }
            Ok(Line::Removed { removed }) => {
                out.removed += 1;
                live.remove(&removed);
            }
            Err(e) => out.damaged.push(DeadLetterError::Damaged {
                path: path.to_owned(),
                line: number,
                reason: e.to_string(),
            }),
        }
        out.clean_len += n as u64;
    }
    out.letters = order.into_iter().filter_map(|id| live.remove(&id)).collect();
    Ok(Some(out))
}

/// The journal file of one plugin's dead letters.
struct Journal {
    path: PathBuf,
    /// Sync each append (the log's durability is not `off`).
    sync: bool,
}

impl Journal {
    fn append(&self, lines: &[Vec<u8>]) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        failpoint::hit("dead_letter.append.before")?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        let mut buf = Vec::new();
        for line in lines {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        f.write_all(&buf)?;
        if self.sync {
            failpoint::hit("dead_letter.sync.before")?;
            f.sync_data()?;
        }
        failpoint::hit("dead_letter.append.after")?;
        Ok(())
    }

    /// Rewrites the journal with `letters` only: to a temporary file, synced,
    /// renamed over the journal, the directory synced.
    fn rewrite(&self, letters: &[DeadLetter]) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut buf = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut buf, letter).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        if self.sync {
            f.sync_data()?;
        }
        drop(f);
        failpoint::hit("dead_letter.compact.rename")?;
        std::fs::rename(&tmp, &self.path)?;
        if self.sync {
            crate::log::sync_dir(dir)?;
        }
        Ok(())
    }
}

/// What the store holds in memory.
#[derive(Default)]
struct Book {
    /// Ids of every live letter.
    live: HashSet<String>,
    /// The newest [`MAX_KEPT`] live letters, oldest first.
    recent: VecDeque<DeadLetter>,
    /// Removal lines in the journal since it was last compacted.
    removed_lines: usize,
    /// Letters whose write to the journal failed: written again before the
    /// next letter, and before the plugin's next snapshot is kept (which
    /// waits for them: a snapshot past an unwritten letter's event would
    /// lose it at the next restart).
    unwritten: Vec<DeadLetter>,
}

/// A plugin's dead letters: shared by its worker (which adds letters and
/// removes the redriven ones) and the bus (which lists and redrives).
pub(crate) struct DeadLetters {
    book: Mutex<Book>,
    /// The journal, when the bus has a log.
    journal: Option<Journal>,
}

impl DeadLetters {
    /// A store with no file: letters live as long as the bus.
    pub fn in_memory() -> DeadLetters {
        DeadLetters {
            book: Mutex::new(Book::default()),
            journal: None,
        }
    }

    /// The plugin's dead letters kept in `log_dir`: those a previous run
    /// recorded are read back (a blocking read: call it off the async
    /// runtime). A torn last line is cut off so that appends start on a
    /// line of their own; damaged lines are skipped with an error logged.
    pub fn open(plugin: &str, log_dir: &Path, sync: bool) -> DeadLetters {
        let journal = Journal {
            path: log_dir.join(DIR).join(format!("{plugin}.jsonl")),
            sync,
        };
        let mut book = Book::default();
        match fold(&journal.path) {
            Ok(None) => {}
            Ok(Some(folded)) => {
                for e in &folded.damaged {
                    tracing::error!(plugin, error = %e, "a damaged dead letter is skipped");
                }
                if let Err(e) = cut_torn_tail(&journal.path, folded.clean_len) {
                    tracing::error!(plugin, file = %journal.path.display(), error = %e, "cannot cut the torn last line of the dead letters");
                }
                for letter in folded.letters {
                    book.live.insert(letter.event.id.clone());
                    let _ = push_recent(&mut book.recent, letter);
                }
                book.removed_lines = folded.removed;
            }
            Err(e) => tracing::error!(plugin, error = %e, "cannot read the recorded dead letters"),
        }
        let store = DeadLetters {
            book: Mutex::new(book),
            journal: Some(journal),
        };
        store.maybe_compact();
        store
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `letter`, durably when there is a journal, unless a letter
    /// for the same event is live already. Returns whether it is new. An
    /// I/O error is logged and the letter kept in memory, to be written
    /// again ([`write_unwritten`](Self::write_unwritten)).
    pub fn add(&self, letter: DeadLetter) -> bool {
        let mut book = self.book();
        if !book.live.insert(letter.event.id.clone()) {
            return false;
        }
        if let Some(journal) = &self.journal {
            book.unwritten.push(letter.clone());
            if let Err(e) = Self::write(journal, &mut book) {
                tracing::error!(plugin = %letter.plugin, file = %journal.path.display(), error = %e, unwritten = book.unwritten.len(), "cannot write a dead letter; kept in memory, written again before the plugin's next snapshot");
            }
        }
        // Without a journal a letter pushed out of memory is gone: it is
        // no longer live (and the set stays as bounded as the letters).
        if let Some(evicted) = push_recent(&mut book.recent, letter)
            && self.journal.is_none()
        {
            book.live.remove(&evicted.event.id);
        }
        true
    }

    /// Writes the letters whose write failed before, if any: the plugin's
    /// snapshot is kept only once they are written.
    ///
    /// # Errors
    /// The journal's I/O error; the letters stay in memory, unwritten.
    pub fn write_unwritten(&self) -> std::io::Result<()> {
        let Some(journal) = &self.journal else { return Ok(()) };
        let mut book = self.book();
        Self::write(journal, &mut book)
    }

    /// Appends `book.unwritten` to the journal, and forgets them once written.
    fn write(journal: &Journal, book: &mut Book) -> std::io::Result<()> {
        if book.unwritten.is_empty() {
            return Ok(());
        }
        let lines = book
            .unwritten
            .iter()
            .map(|l| serde_json::to_vec(l).map_err(std::io::Error::other))
            .collect::<std::io::Result<Vec<_>>>()?;
        journal.append(&lines)?;
        book.unwritten.clear();
        Ok(())
    }

    /// Whether a live letter holds the event with this id.
    pub fn contains(&self, event_id: &str) -> bool {
        self.book().live.contains(event_id)
    }

    /// Removes the letters of these events (their outcome is known and
    /// kept), durably when there is a journal.
    ///
    /// # Errors
    /// The journal could not be written: the letters stay (in memory too),
    /// so a later redrive or a restart still sees them.
    pub fn remove(&self, event_ids: &[String]) -> std::io::Result<()> {
        let mut book = self.book();
        let gone: Vec<&String> = event_ids.iter().filter(|id| book.live.contains(*id)).collect();
        if gone.is_empty() {
            return Ok(());
        }
        if let Some(journal) = &self.journal {
            let lines: Vec<Vec<u8>> = gone
                .iter()
                .map(|id| serde_json::to_vec(&serde_json::json!({ "removed": id })))
                .collect::<Result<_, _>>()
                .map_err(std::io::Error::other)?;
            journal.append(&lines)?;
            book.removed_lines += gone.len();
        }
        let gone: HashSet<String> = gone.into_iter().cloned().collect();
        book.live.retain(|id| !gone.contains(id));
        book.unwritten.retain(|l| !gone.contains(&l.event.id));
        book.recent.retain(|l| !gone.contains(&l.event.id));
        drop(book);
        self.maybe_compact();
        Ok(())
    }

    /// Every live letter, oldest first: from the journal when there is one
    /// (all of them), else the ones in memory.
    pub fn all(&self) -> Vec<DeadLetter> {
        let Some(journal) = &self.journal else {
            return self.book().recent.iter().cloned().collect();
        };
        // Appends and removals hold the lock: read a consistent journal.
        let book = self.book();
        // Letters whose write failed are live too: after the written ones.
        let unwritten = book.unwritten.iter().cloned();
        match fold(&journal.path) {
            Ok(Some(folded)) => folded
                .letters
                .into_iter()
                .filter(|l| book.live.contains(&l.event.id))
                .chain(unwritten)
                .collect(),
            Ok(None) => unwritten.collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the dead letters; using those in memory");
                book.recent.iter().cloned().collect()
            }
        }
    }

    /// The newest [`MAX_KEPT`] live letters, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.book().recent.iter().cloned().collect()
    }

    /// Rewrites the journal once removals outnumber the live letters.
    fn maybe_compact(&self) {
        let Some(journal) = &self.journal else { return };
        let mut book = self.book();
        if book.removed_lines < COMPACT_MIN_REMOVED || book.removed_lines < book.live.len() {
            return;
        }
        let letters = match fold(&journal.path) {
            Ok(Some(folded)) => folded.letters,
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, "dead letters not compacted");
                return;
            }
        };
        match journal.rewrite(&letters) {
            Ok(()) => book.removed_lines = 0,
            Err(e) => tracing::warn!(file = %journal.path.display(), error = %e, "dead letters not compacted"),
        }
    }
}

/// Keeps `letter` among the newest; returns the one it pushed out, if any.
fn push_recent(recent: &mut VecDeque<DeadLetter>, letter: DeadLetter) -> Option<DeadLetter> {
    let evicted = (recent.len() == MAX_KEPT).then(|| recent.pop_front()).flatten();
    recent.push_back(letter);
    evicted
}

/// Cuts `path` to `clean_len` if it is longer (a torn last line).
fn cut_torn_tail(path: &Path, clean_len: u64) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    if file.metadata()?.len() > clean_len {
        file.set_len(clean_len)?;
        file.sync_data()?;
    }
    Ok(())
}

/// Reads the dead letters recorded in a log directory, for every plugin or
/// the one named: the live ones (recorded and not redriven), oldest first.
/// A torn last line is ignored.
///
/// # Errors
/// [`DeadLetterError`] naming the file (and line, for a damaged one): one
/// damaged line fails the whole read. [`read_dead_letters_past_damage`]
/// reads the rest.
pub fn read_dead_letters(log_dir: &Path, plugin: Option<&str>) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let (letters, mut damaged) = read_dead_letters_past_damage(log_dir, plugin)?;
    match damaged.pop() {
        Some(e) => Err(e),
        None => Ok(letters),
    }
}

/// [`read_dead_letters`], skipping damaged lines (as a plugin's store does
/// when it opens, and a redrive): the letters that could be read, and what
/// is wrong with each line that could not, naming its file and line.
///
/// # Errors
/// [`DeadLetterError`] naming the directory or a file that cannot be read.
pub fn read_dead_letters_past_damage(
    log_dir: &Path,
    plugin: Option<&str>,
) -> Result<(Vec<DeadLetter>, Vec<DeadLetterError>), DeadLetterError> {
    let dir = log_dir.join(DIR);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .filter(|p| plugin.is_none_or(|name| p.file_stem().is_some_and(|s| s == name)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(DeadLetterError::Io {
                path: dir,
                reason: e.to_string(),
            });
        }
    };
    files.sort();
    let (mut letters, mut damaged) = (Vec::new(), Vec::new());
    for file in files {
        if let Some(folded) = fold(&file)? {
            damaged.extend(folded.damaged);
            letters.extend(folded.letters);
        }
    }
    letters.sort_by_key(|l| l.failed_at_unix_nanos);
    Ok((letters, damaged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn letter(i: u64) -> DeadLetter {
        let event = Event::new("e", json!({ "i": i }));
        event.set_seq(i);
        DeadLetter::new("p", &event, &Failure::OutOfFuel)
    }

    #[test]
    fn letters_are_keyed_by_event_and_removals_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::open("p", dir.path(), true);
        let letters: Vec<DeadLetter> = (1..=3).map(letter).collect();
        for l in &letters {
            assert!(store.add(l.clone()));
        }
        assert!(!store.add(letters[1].clone()), "the same event is one letter");
        store.remove(&[letters[0].event.id.clone()]).unwrap();
        let again = DeadLetters::open("p", dir.path(), true);
        let ids: Vec<u64> = again.all().iter().map(|l| l.event.seq).collect();
        assert_eq!(ids, [2, 3]);
        assert!(again.contains(&letters[2].event.id) && !again.contains(&letters[0].event.id));
        assert_eq!(read_dead_letters(dir.path(), Some("p")).unwrap().len(), 2);
    }

    #[test]
    fn more_letters_than_memory_keeps_are_all_redrivable() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::open("p", dir.path(), false);
        for i in 1..=(MAX_KEPT as u64 + 500) {
            store.add(letter(i));
        }
        assert_eq!(store.list().len(), MAX_KEPT);
        assert_eq!(store.all().len(), MAX_KEPT + 500);
        assert_eq!(DeadLetters::open("p", dir.path(), false).all().len(), MAX_KEPT + 500);
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::open("p", dir.path(), true);
        store.add(letter(1));
        store.add(letter(2));
        drop(store);
        let path = dir.path().join(DIR).join("p.jsonl");
        let whole = std::fs::read(&path).unwrap();
        // A crash in the middle of the third append.
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"plugin":"p","failure":"pan"#);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(read_dead_letters(dir.path(), None).unwrap().len(), 2);
        let store = DeadLetters::open("p", dir.path(), true);
        assert_eq!(std::fs::read(&path).unwrap(), whole, "the torn line is cut off");
        store.add(letter(3));
        let seqs: Vec<u64> = DeadLetters::open("p", dir.path(), true)
            .all()
            .iter()
            .map(|l| l.event.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_named_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::open("p", dir.path(), false);
        store.add(letter(1));
        drop(store);
        let path = dir.path().join(DIR).join("p.jsonl");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"not json\n");
        std::fs::write(&path, &bytes).unwrap();
        DeadLetters::open("p", dir.path(), false).add(letter(2));
        let err = read_dead_letters(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("p.jsonl:2"), "{err}");
        let (letters, damaged) = read_dead_letters_past_damage(dir.path(), None).unwrap();
        assert_eq!((letters.len(), damaged.len()), (2, 1));
        assert!(damaged[0].to_string().contains("p.jsonl:2"), "{}", damaged[0]);
        assert_eq!(DeadLetters::open("p", dir.path(), false).all().len(), 2);
    }

    #[test]
    fn the_journal_is_compacted_once_removals_outnumber_letters() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetters::open("p", dir.path(), false);
        let letters: Vec<DeadLetter> = (1..=200).map(letter).collect();
        for l in &letters {
            store.add(l.clone());
        }
        let ids: Vec<String> = letters[..150].iter().map(|l| l.event.id.clone()).collect();
        store.remove(&ids).unwrap();
        let path = dir.path().join(DIR).join("p.jsonl");
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 50, "rewritten with the live letters only");
        assert_eq!(store.all().len(), 50);
    }
}
