//! Dead letters: the events that made a plugin fail hard, kept per plugin so
//! that they can be looked at and sent again once the plugin is fixed.
//!
//! The event that trapped is left out of the replay that rebuilds the
//! plugin's state (it would trap again), so it lands here instead of being
//! lost. In memory the bus keeps the last [`MAX_KEPT`] per plugin; with an
//! event log each is also appended, as one JSON line, to
//! `<log dir>/dead-letters/<plugin>.jsonl`, which survives restarts and is
//! what `plugbus dlq list` reads.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::log::Record;
use crate::outcome::Failure;

/// Dead letters kept in memory per plugin: the newest 1000. A plugin that
/// fails more often than that is quarantined long before; the file keeps all.
pub const MAX_KEPT: usize = 1000;

/// The folder of the log directory holding dead-letter files.
pub const DIR: &str = "dead-letters";

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
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        DeadLetter {
            plugin: plugin.to_owned(),
            failure: failure.kind().to_owned(),
            reason: failure.to_string(),
            failed_at_unix_nanos: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
            event: Record::from_event(event),
        }
    }
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
    /// Failed hard again: dead letters again.
    pub failed: u64,
    /// Not delivered (queue full, quarantined, unloaded): lost to the redrive.
    pub dropped: u64,
}

/// A plugin's dead letters: shared by its worker (which adds) and the bus
/// (which reads and redrives).
pub(crate) struct DeadLetters {
    kept: Mutex<VecDeque<DeadLetter>>,
    /// The JSON Lines file, when the bus has a log.
    file: Option<PathBuf>,
}

impl DeadLetters {
    /// The plugin's dead letters; with a log, those a previous run recorded
    /// are read back (the newest [`MAX_KEPT`]), so they can be redriven.
    pub fn new(plugin: &str, log_dir: Option<&Path>) -> DeadLetters {
        let mut kept = VecDeque::new();
        if let Some(dir) = log_dir {
            match read_dead_letters(dir, Some(plugin)) {
                Ok(letters) => kept.extend(letters.into_iter().rev().take(MAX_KEPT).rev()),
                Err(reason) => tracing::warn!(plugin, %reason, "cannot read the recorded dead letters"),
            }
        }
        DeadLetters {
            kept: Mutex::new(kept),
            file: log_dir.map(|d| d.join(DIR).join(format!("{plugin}.jsonl"))),
        }
    }

    /// Takes every letter out (memory and file), for a redrive: those that
    /// fail again are added back by the worker as new letters.
    pub fn take_all(&self) -> Vec<DeadLetter> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = &self.file
            && let Err(e) = std::fs::write(file, b"")
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(file = %file.display(), error = %e, "cannot clear the dead-letter file");
        }
        kept.drain(..).collect()
    }

    /// Keeps `letter`, and appends it to the file (an I/O error is logged:
    /// the letter is still kept in memory).
    pub fn add(&self, letter: DeadLetter) {
        if let Some(file) = &self.file
            && let Err(e) = append_line(file, &letter)
        {
            tracing::error!(plugin = %letter.plugin, file = %file.display(), error = %e, "cannot write a dead letter");
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() == MAX_KEPT {
            kept.pop_front();
        }
        kept.push_back(letter);
    }

    /// The kept letters, oldest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

fn append_line(path: &Path, letter: &DeadLetter) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut line = serde_json::to_vec(letter).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(&line)
}

/// Reads the dead letters recorded in a log directory, for every plugin or
/// the one named.
///
/// # Errors
/// A message naming the file and line at fault.
pub fn read_dead_letters(log_dir: &Path, plugin: Option<&str>) -> Result<Vec<DeadLetter>, String> {
    let dir = log_dir.join(DIR);
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .filter(|p| plugin.is_none_or(|name| p.file_stem().is_some_and(|s| s == name)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    files.sort();
    let mut letters = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let letter: DeadLetter =
                serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", file.display(), i + 1))?;
            letters.push(letter);
        }
    }
    letters.sort_by_key(|l| l.failed_at_unix_nanos);
    Ok(letters)
}
