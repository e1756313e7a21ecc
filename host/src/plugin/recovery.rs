//! What a plugin's worker keeps to bring the plugin's state back after a
//! trap: the last snapshot of a plugin that exports `state`, and the events
//! it handled since (since its instance started, for a plugin without
//! `state`). After a trap the worker builds a fresh instance, restores the
//! snapshot and replays those events, without the one that trapped, with
//! the plugin's emits and logs silenced (they happened the first time).
//!
//! The events are the bus's own `Arc`s, shared with the queues and the
//! history: keeping them costs a pointer each, plus their payloads for as
//! long as they are kept, which [`Limits::replay_max_events`] bounds.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::event::Event;
use crate::limits::Limits;

/// A plugin's last good snapshot.
#[derive(Clone)]
pub(crate) struct Snapshot {
    pub bytes: Arc<[u8]>,
    /// Sequence number of the last event the snapshot includes.
    pub seq: Option<u64>,
    /// Ids of dead-lettered events a redrive applied to this state whose
    /// letters may not be removed from the journal yet: a restart from this
    /// snapshot removes them (the snapshot is what commits a redrive).
    pub letters: Arc<[String]>,
}

#[cfg(test)]
impl Snapshot {
    pub fn new(bytes: Arc<[u8]>, seq: Option<u64>) -> Snapshot {
        Snapshot {
            bytes,
            seq,
            letters: Arc::from(Vec::new()),
        }
    }
}

/// The folder of the log directory holding snapshot files.
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";
/// First bytes of a snapshot file, format version 1: seq, crc, bytes.
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"PBSNAP\x00\x01";
/// Format version 2: seq, crc, the redriven letters' ids, bytes.
const SNAPSHOT_MAGIC: &[u8; 8] = b"PBSNAP\x00\x02";

/// Where a plugin's snapshot is kept beside the log.
pub(crate) fn snapshot_path(log_dir: &Path, plugin: &str) -> PathBuf {
    log_dir.join(SNAPSHOT_DIR).join(format!("{plugin}.snap"))
}

/// Temporary files of one process get distinct names, so that two writers
/// of one plugin's snapshot (versions during a hot swap) never share one.
static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes a snapshot file atomically: magic, seq (u64 LE), CRC-32 (u32 LE)
/// of what follows, the length of the letters' JSON (u32 LE), that JSON, the
/// bytes; to a temporary file, synced unless `sync` is false, then renamed
/// over the previous one, and the directory synced. A crash leaves the old
/// or the new snapshot, never half of one.
pub(crate) fn persist(path: &Path, snapshot: &Snapshot, sync: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("snap.{}-{n}.tmp", std::process::id()));
    let letters = serde_json::to_vec(&*snapshot.letters).map_err(std::io::Error::other)?;
    let letters_len = u32::try_from(letters.len()).map_err(std::io::Error::other)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&letters_len.to_le_bytes());
    crc.update(&letters);
    crc.update(&snapshot.bytes);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(SNAPSHOT_MAGIC)?;
    f.write_all(&snapshot.seq.unwrap_or(0).to_le_bytes())?;
    f.write_all(&crc.finalize().to_le_bytes())?;
    f.write_all(&letters_len.to_le_bytes())?;
    f.write_all(&letters)?;
    f.write_all(&snapshot.bytes)?;
    if sync {
        crate::failpoint::hit("snapshot.sync.before")?;
        f.sync_data()?;
    }
    drop(f);
    crate::failpoint::hit("snapshot.rename.before")?;
    std::fs::rename(&tmp, path)?;
    if sync {
        crate::log::sync_dir(dir)?;
    }
    crate::failpoint::hit("snapshot.persist.after")?;
    Ok(())
}

/// The snapshots kept in `log_dir`: each plugin's name and the position of
/// its snapshot. Reads each file's header only.
pub(crate) fn kept_positions(log_dir: &Path) -> BTreeMap<String, u64> {
    let mut kept = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(log_dir.join(SNAPSHOT_DIR)) else {
        return kept;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().is_none_or(|e| e != "snap") {
            continue;
        }
        let Some(plugin) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let mut head = [0u8; 16];
        let read = std::fs::File::open(&path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
        if read.is_ok() && (head[..8] == SNAPSHOT_MAGIC[..] || head[..8] == SNAPSHOT_MAGIC_V1[..]) {
            let seq = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
            kept.insert(plugin.to_owned(), seq);
        }
    }
    kept
}

/// The retention floor snapshots at `positions` ask for: the lowest
/// position after any of them (0 when there are none).
pub(crate) fn floor_of(positions: &BTreeMap<String, u64>) -> u64 {
    positions.values().min().map_or(0, |seq| seq + 1)
}

/// Reads a snapshot file (format 1 or 2). `Ok(None)` when there is none;
/// an error names what is wrong (the caller rebuilds from the log instead).
pub(crate) fn load(path: &Path) -> Result<Option<Snapshot>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bad = |why: &str| format!("{}: {why}", path.display());
    let (v2, rest) = match (
        bytes.strip_prefix(SNAPSHOT_MAGIC),
        bytes.strip_prefix(SNAPSHOT_MAGIC_V1),
    ) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(bad("not a plugbus snapshot")),
    };
    if rest.len() < 12 {
        return Err(bad("cut short"));
    }
    let seq = u64::from_le_bytes(rest[..8].try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(rest[8..12].try_into().unwrap_or_default());
    let covered = &rest[12..];
    if crc32fast::hash(covered) != crc {
        return Err(bad("checksum mismatch"));
    }
    let (letters, body): (Vec<String>, &[u8]) = if v2 {
        if covered.len() < 4 {
            return Err(bad("cut short"));
        }
        let len = u32::from_le_bytes(covered[..4].try_into().unwrap_or_default()) as usize;
        let Some(json) = covered.get(4..4 + len) else {
            return Err(bad("cut short"));
        };
        let letters = serde_json::from_slice(json).map_err(|e| bad(&format!("bad letters list: {e}")))?;
        (letters, &covered[4 + len..])
    } else {
        (Vec::new(), covered)
    };
    Ok(Some(Snapshot {
        bytes: Arc::from(body),
        seq: (seq > 0).then_some(seq),
        letters: Arc::from(letters),
    }))
}

/// What a worker keeps beside the log: the log (its snapshots go beside
/// it), and the snapshot a previous run left, to resume from.
pub(crate) struct KeptState {
    pub resume: Option<Snapshot>,
    /// Where to leave the final state for a hot-swapped successor.
    pub handoff: Arc<std::sync::Mutex<Option<Handoff>>>,
    /// The bus's log when plugin state is kept beside it: snapshots are
    /// written beside it (synced unless its durability is `off`), persisted
    /// only once their position is durable there, and a state that cannot
    /// be handed over is rebuilt from it.
    pub log: Option<crate::log::EventLog>,
    /// The plugin's subscriptions, for reading its events from the log.
    pub patterns: Vec<crate::pattern::Pattern>,
}

/// What a stopped worker leaves for the version that replaces it.
pub(crate) struct Handoff {
    pub recovery: Recovery,
    /// Sequence number of the last event the old version handled.
    pub last_seq: Option<u64>,
    /// Redriven letters the old version applied whose removal no snapshot
    /// committed yet: the new version's state includes them (its snapshot
    /// and `recovery` do), so it commits them and never applies them again.
    pub letters_applied: Vec<String>,
}

/// Owned by the plugin's worker alone.
pub(crate) struct Recovery {
    pub snapshot: Option<Snapshot>,
    /// Events handled since the snapshot (or since the instance started).
    since: VecDeque<Event>,
    /// Payload bytes of `since`.
    since_bytes: usize,
    /// The lowest sequence number in `since` (a redriven letter is older
    /// than the events handled before it).
    oldest: Option<u64>,
    /// False once more events were handled than can be kept: the state can
    /// no longer be rebuilt by replay.
    complete: bool,
    handled_since_snapshot: u32,
    last_snapshot: Instant,
    /// A failure dropped the instance: the next one must get the state back.
    pub needs_rebuild: bool,
}

/// How to rebuild the state, decided before touching the new instance.
pub(crate) enum Plan {
    /// Restore this snapshot (if any), then replay these events.
    Rebuild {
        snapshot: Option<Snapshot>,
        events: Vec<Event>,
    },
    /// The state cannot be rebuilt; why.
    Lost(String),
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            snapshot: None,
            since: VecDeque::new(),
            since_bytes: 0,
            oldest: None,
            complete: true,
            handled_since_snapshot: 0,
            last_snapshot: Instant::now(),
            needs_rebuild: false,
        }
    }
}

impl Recovery {
    /// Records an event the plugin handled (returned ok or err): part of its
    /// state from now on.
    pub fn handled(&mut self, event: &Event, limits: &Limits) {
        self.handled_since_snapshot = self.handled_since_snapshot.saturating_add(1);
        if !self.complete {
            return;
        }
        let bytes = event.payload_json().len();
        if self.since.len() >= limits.replay_max_events
            || self.since_bytes.saturating_add(bytes) > limits.replay_max_bytes
        {
            self.complete = false;
            self.since = VecDeque::new();
            self.since_bytes = 0;
            self.oldest = None;
            return;
        }
        self.since_bytes += bytes;
        if let Some(seq) = event.seq() {
            self.oldest = Some(self.oldest.map_or(seq, |oldest| oldest.min(seq)));
        }
        self.since.push_back(event.clone());
    }

    /// The sequence number of the oldest event a rebuild would hand to the
    /// plugin again (none when it would hand none, or could not rebuild).
    pub fn oldest_seq(&self) -> Option<u64> {
        if self.complete { self.oldest } else { None }
    }

    /// Whether a plugin with `state` should be snapshotted now.
    pub fn snapshot_due(&self, limits: &Limits) -> bool {
        (limits.snapshot_every > 0 && self.handled_since_snapshot >= limits.snapshot_every)
            || (self.handled_since_snapshot > 0 && self.last_snapshot.elapsed() >= limits.snapshot_interval)
    }

    /// Events that can be handled before a snapshot is due by count (at
    /// least 1; `usize::MAX` without periodic snapshots): a batch stops
    /// there, so snapshots fall every `snapshot_every` events, batched or not.
    pub fn until_snapshot(&self, limits: &Limits) -> usize {
        if limits.snapshot_every == 0 {
            return usize::MAX;
        }
        limits.snapshot_every.saturating_sub(self.handled_since_snapshot).max(1) as usize
    }

    /// A snapshot was taken after the last handled event.
    pub fn snapshotted(&mut self, snapshot: Snapshot) {
        self.snapshot = Some(snapshot);
        self.since.clear();
        self.since_bytes = 0;
        self.oldest = None;
        self.complete = true;
        self.handled_since_snapshot = 0;
        self.last_snapshot = Instant::now();
    }

    /// Events handled since the last snapshot.
    pub fn handled_since_snapshot(&self) -> u32 {
        self.handled_since_snapshot
    }

    /// The snapshot was declined: try again after the next event.
    pub fn snapshot_declined(&mut self) {
        self.last_snapshot = Instant::now();
    }

    /// What to do for the instance being rebuilt.
    pub fn plan(&self, limits: &Limits) -> Plan {
        if !self.complete {
            return Plan::Lost(format!(
                "more than {} events or {} MiB of payloads since its last snapshot or start \
                 (limits.replay_max_events, replay_max_mib)",
                limits.replay_max_events,
                limits.replay_max_bytes >> 20
            ));
        }
        Plan::Rebuild {
            snapshot: self.snapshot.clone(),
            events: self.since.iter().cloned().collect(),
        }
    }

    /// The state is gone: the new instance starts empty, and so does the
    /// record of what it handled.
    pub fn reset(&mut self) {
        *self = Recovery::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn snapshot_files_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = snapshot_path(dir.path(), "p");
        assert!(load(&path).unwrap().is_none());
        let snap = Snapshot {
            bytes: Arc::from(&b"{\"total\":3}"[..]),
            seq: Some(42),
            letters: Arc::from(vec!["e-1".to_owned()]),
        };
        persist(&path, &snap, true).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!((&*back.bytes, back.seq), (&*snap.bytes, Some(42)));
        assert_eq!(&*back.letters, ["e-1".to_owned()]);
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        let err = load(&path).err().unwrap();
        assert!(err.contains("p.snap") && err.contains("checksum"), "{err}");
    }

    #[test]
    fn keeps_what_was_handled_since_the_snapshot_up_to_the_bound() {
        let limits = Limits {
            replay_max_events: 3,
            snapshot_every: 2,
            ..Limits::default()
        };
        let mut r = Recovery::default();
        let ev = |n: &str| Event::new(n, Value::Null);
        r.handled(&ev("a"), &limits);
        assert!(!r.snapshot_due(&limits));
        r.handled(&ev("b"), &limits);
        assert!(r.snapshot_due(&limits));
        match r.plan(&limits) {
            Plan::Rebuild { snapshot: None, events } => assert_eq!(events.len(), 2),
            _ => panic!("expected a replay of two events"),
        }
        r.snapshotted(Snapshot::new(Arc::from(&b"s"[..]), Some(2)));
        r.handled(&ev("c"), &limits);
        match r.plan(&limits) {
            Plan::Rebuild {
                snapshot: Some(s),
                events,
            } => assert_eq!((&*s.bytes, events.len()), (&b"s"[..], 1)),
            _ => panic!("expected restore + one event"),
        }
        for n in ["d", "e", "f"] {
            r.handled(&ev(n), &limits);
        }
        assert!(matches!(r.plan(&limits), Plan::Lost(reason) if reason.contains("replay_max_events")));
        r.reset();
        assert!(matches!(r.plan(&limits), Plan::Rebuild { snapshot: None, events } if events.is_empty()));
    }

    #[test]
    fn the_replay_buffer_is_bounded_by_payload_bytes_too() {
        let limits = Limits {
            replay_max_bytes: 1000,
            ..Limits::default()
        };
        let mut r = Recovery::default();
        let big = Event::new("e", Value::String("x".repeat(400)));
        r.handled(&big, &limits);
        r.handled(&big, &limits);
        assert!(matches!(r.plan(&limits), Plan::Rebuild { events, .. } if events.len() == 2));
        r.handled(&big, &limits);
        assert!(matches!(r.plan(&limits), Plan::Lost(reason) if reason.contains("MiB")));
    }
}
