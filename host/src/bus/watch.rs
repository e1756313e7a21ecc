//! Watching the plugin directory: `.wasm` files and manifests added,
//! replaced (in place or by rename) or removed are loaded, hot-swapped or
//! unloaded while the bus runs.
//!
//! notify's raw events are debounced per plugin name: a change is acted on
//! once the plugin's files have been quiet for [`DEBOUNCE`] and their size
//! and modification time hold still across [`SETTLE`]. A file still being
//! copied in is therefore not loaded half-written; if it is (a writer that
//! pauses longer than that), validation refuses it, the running version
//! stays, and the write that completes it triggers a new attempt. The
//! reliable way to install a plugin is still to write it elsewhere on the
//! same filesystem and rename it into place.
//!
//! Only events that can change a plugin count: files created, written,
//! renamed, removed, or their metadata changed ([`changes_plugin`]). Opening
//! and reading do not: the host's own reads of a plugin's files (every load
//! and reload reads them) must not start another reload. A change that is
//! refused is reported once: the same files (size, times, inode) are not
//! tried again until one of them changes.
//!
//! Some changes name no plugin file, and the whole directory is looked at
//! again (every plugin file in it, and every plugin loaded from it; files
//! unchanged since their load are left alone): the system dropped file
//! events (its queue overflowed), or an entry whose name starts with `..`
//! changed (Kubernetes mounts a ConfigMap or Secret as links through
//! `..data`, which an update swaps in one rename). When the directory itself
//! is removed or moved away, its plugins are unloaded with a warning, and
//! it is watched again, and read again, once a directory is back at its
//! path ([`ROOT_POLL`]). Not seen: a symlinked plugin file whose target
//! changes, and `--plugins` given as a symlink that is repointed (replace
//! the file or the link itself).
//!
//! Changes to different plugins are applied side by side (up to the cores:
//! their compiles run in parallel), one at a time per plugin; the swap
//! itself, and the old version's drain, stay one at a time on the bus.
//!
//! Each change is announced on the bus as a meta-event:
//! `plugbus.plugin.loaded`, `.reloaded`, `.unloaded` or `.load_failed`,
//! with payload `{name, file, version, reason}`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher as _};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::bus::lifecycle::Reload;
use crate::bus::{Bus, LoadFailure, Shared, lock};

/// Quiet time after the last file event before acting. Long enough to
/// coalesce the burst of events one copy or rename produces, short enough
/// to feel immediate.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// Size and mtime must hold still this long before a file is read.
pub const SETTLE: Duration = Duration::from_millis(100);

/// How often a removed plugin directory is looked for again: the parent is
/// not watched, so its return is noticed by looking (one `stat`).
pub const ROOT_POLL: Duration = Duration::from_millis(500);

/// What the watcher's callback hands the watch task.
#[derive(Debug)]
enum Signal {
    /// A file that may belong to a plugin changed.
    Path(PathBuf),
    /// Look at the whole directory again, for this reason.
    Rescan(&'static str),
    /// The watched directory itself changed: removed, moved, or only its
    /// metadata (the task checks which).
    Root,
}

/// Keeps the watcher running (the task owns it); dropping it stops watching.
pub(crate) struct WatchHandle {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchHandle {
    /// Stops watching and waits for an in-progress change to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `dir` for the bus behind `shared`.
pub(crate) fn start(
    shared: Weak<Shared>,
    dir: PathBuf,
    exact: bool,
    runtime: &tokio::runtime::Handle,
) -> notify::Result<WatchHandle> {
    let (tx, rx) = mpsc::unbounded_channel::<Signal>();
    let root = dir.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) if event.need_rescan() => {
            let _ = tx.send(Signal::Rescan("the system dropped file events (its queue overflowed)"));
        }
        Ok(event) if changes_plugin(&event.kind) => {
            for path in event.paths {
                let signal = if path == root {
                    Signal::Root
                } else if is_atomic_writer_entry(&path) {
                    Signal::Rescan("an atomic update of the directory's links (`..data`)")
                } else {
                    Signal::Path(path)
                };
                let _ = tx.send(signal);
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "plugin directory watch error"),
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let root = Root {
        inode: inode(&dir),
        dir,
        watcher,
        lost: false,
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = runtime.spawn(run(shared, root, exact, rx, stop_rx));
    Ok(WatchHandle {
        stop: Some(stop_tx),
        task,
    })
}

/// The watched directory and its watch.
struct Root {
    dir: PathBuf,
    watcher: notify::RecommendedWatcher,
    /// The directory's inode when it was watched: a directory back at its
    /// path after a removal is another one, to be watched again.
    inode: Option<u64>,
    /// The directory is gone (removed or moved away) and not watched.
    lost: bool,
}

impl Root {
    /// After a `Root` signal: whether the directory at the path is still
    /// the one watched. If not, its watch is dropped and it is marked lost.
    fn check(&mut self) -> bool {
        let now = inode(&self.dir);
        if !self.lost && now.is_some() && now == self.inode {
            return true;
        }
        if !self.lost {
            let _ = self.watcher.unwatch(&self.dir);
            self.lost = true;
            tracing::warn!(
                dir = %self.dir.display(),
                "the plugin directory was removed or moved away: its plugins are unloaded; it is watched again when it is back"
            );
        }
        false
    }

    /// While lost: watches the directory again once one is at its path.
    fn try_rewatch(&mut self) -> bool {
        if !self.dir.is_dir() {
            return false;
        }
        match self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.inode = inode(&self.dir);
                self.lost = false;
                tracing::info!(dir = %self.dir.display(), "the plugin directory is back: watched and read again");
                true
            }
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "the plugin directory cannot be watched yet");
                false
            }
        }
    }
}

fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().filter(|m| m.is_dir()).map(|m| m.ino())
}

/// Entries whose names start with `..` (`..data`, `..2026_12_07_…`): what
/// Kubernetes' atomic writer swaps when it updates a mounted ConfigMap or
/// Secret, whose visible files are links through them.
fn is_atomic_writer_entry(path: &Path) -> bool {
    path.file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with("..") && f != "..")
}

/// Whether a file event of this kind can change a plugin: a file created,
/// written (or closed after writing), renamed, removed, or its metadata
/// (mode, owner, times) changed. Opens, reads and closes without writing
/// cannot, and the host makes them itself whenever it loads a plugin: acting
/// on them reloaded every plugin over and over. An access-time update alone
/// cannot either.
fn changes_plugin(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        // Backends that cannot say what happened.
        EventKind::Any => true,
        EventKind::Other => false,
    }
}

/// The plugin a path belongs to: `name` for `name.wasm`, `name.toml` and
/// its signature `name.wasm.minisig`. Hidden and temporary files are ignored.
fn plugin_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    if file.starts_with('.') {
        return None;
    }
    if let Some(stem) = file.strip_suffix(".wasm.minisig") {
        return Some(stem.to_owned());
    }
    let (stem, ext) = file.rsplit_once('.')?;
    matches!(ext, "wasm" | "toml").then(|| stem.to_owned())
}

async fn run(
    shared: Weak<Shared>,
    mut root: Root,
    exact: bool,
    mut rx: mpsc::UnboundedReceiver<Signal>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut pending: HashMap<String, Instant> = HashMap::new();
    // The files of each plugin whose change was refused, as they were then.
    let refused: Arc<Refused> = Arc::default();
    // Changes being applied, one per plugin at most; different plugins'
    // run side by side (a slow compile or drain of one held up every
    // other plugin's change), up to the cores compilation can use.
    let mut applying: JoinSet<(String, bool)> = JoinSet::new();
    let mut in_flight: HashMap<String, tokio::task::Id> = HashMap::new();
    let most = std::thread::available_parallelism().map_or(2, usize::from).max(2);
    loop {
        let next_due = if in_flight.len() < most {
            pending
                .iter()
                .filter(|(name, _)| !in_flight.contains_key(*name))
                .map(|(_, t)| *t + DEBOUNCE)
                .min()
        } else {
            None
        };
        let next_look = root.lost.then(|| Instant::now() + ROOT_POLL);
        tokio::select! {
            _ = &mut stop => {
                // Changes in progress finish: none is left half-applied.
                while applying.join_next().await.is_some() {}
                return;
            }
            signal = rx.recv() => {
                let Some(signal) = signal else { return };
                let rescan = match signal {
                    Signal::Path(path) => {
                        if let Some(name) = plugin_of(&path) {
                            pending.insert(name, Instant::now());
                        }
                        None
                    }
                    Signal::Rescan(why) => Some(why),
                    Signal::Root if root.check() => None,
                    Signal::Root => Some("the plugin directory is gone"),
                };
                if let Some(why) = rescan {
                    let Some(shared) = shared.upgrade() else { return };
                    rescan_all(&Bus { shared }, &root.dir, why, &mut pending);
                }
                continue;
            },
            Some(done) = applying.join_next(), if !applying.is_empty() => {
                match done {
                    Ok((name, settled)) => {
                        in_flight.remove(&name);
                        if !settled {
                            // Still being written: look again after another quiet period.
                            pending.entry(name).or_insert_with(Instant::now);
                        }
                    }
                    // `apply` does not panic on any input; a bug that does is
                    // logged, and its plugin is looked at again.
                    Err(e) => {
                        let name = in_flight.iter().find(|(_, id)| **id == e.id()).map(|(n, _)| n.clone());
                        tracing::error!(plugin = name.as_deref(), error = %e, "applying a plugin change failed");
                        if let Some(name) = name {
                            in_flight.remove(&name);
                            pending.insert(name, Instant::now());
                        }
                    }
                }
                continue;
            },
            _ = sleep_until(next_due.into_iter().chain(next_look).min()) => {}
        }
        if root.lost && root.try_rewatch() {
            let Some(shared) = shared.upgrade() else { return };
            rescan_all(&Bus { shared }, &root.dir, "the plugin directory is back", &mut pending);
        }
        let due: Vec<String> = pending
            .iter()
            .filter(|(name, t)| t.elapsed() >= DEBOUNCE && !in_flight.contains_key(*name))
            .map(|(n, _)| n.clone())
            .take(most.saturating_sub(in_flight.len()))
            .collect();
        for name in due {
            pending.remove(&name);
            let Some(shared) = shared.upgrade() else { return };
            let (dir, refused) = (root.dir.clone(), refused.clone());
            let task = applying.spawn({
                let name = name.clone();
                async move {
                    let settled = apply(&Bus { shared }, &dir, &name, exact, &refused).await;
                    (name, settled)
                }
            });
            in_flight.insert(name, task.id());
        }
    }
}

/// The files of each plugin whose change was refused, as they were then.
type Refused = Mutex<HashMap<String, Fingerprints>>;

/// Marks every plugin of `dir` to be looked at: the plugin files in it and
/// the plugins loaded from it (those whose files are gone unload). A
/// plugin whose files did not change since its load is left as it is.
fn rescan_all(bus: &Bus, dir: &Path, why: &str, pending: &mut HashMap<String, Instant>) {
    let mut names: Vec<String> = bus
        .plugins()
        .into_iter()
        .filter(|p| p.path.parent() == Some(dir))
        .map(|p| p.name)
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        names.extend(entries.filter_map(|e| plugin_of(&e.ok()?.path())));
    }
    tracing::info!(dir = %dir.display(), reason = why, plugins = names.len(), "looking at every plugin of the directory again");
    let now = Instant::now();
    for name in names {
        pending.insert(name, now);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// What identifies one version of a file without reading it: size,
/// modification and change times, and inode (a rename over it changes the
/// inode; a `chmod` the change time).
type Fingerprint = (u64, SystemTime, i64, i64, u64);

/// A plugin's `.wasm`, manifest and signature, each `None` when missing.
type Fingerprints = [Option<Fingerprint>; 3];

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ctime(), m.ctime_nsec(), m.ino()))
}

fn fingerprints(files: &[&Path; 3]) -> Fingerprints {
    files.map(fingerprint)
}

/// Brings plugin `name` in line with the directory. Returns false when its
/// files are still changing. With `exact`, a change that cannot be loaded
/// unloads the running version (the directory's version or none). A change
/// refused before is not tried again while the files are as they were then
/// (`refused`): the refusal was reported once.
async fn apply(bus: &Bus, dir: &Path, name: &str, exact: bool, refused: &Refused) -> bool {
    let wasm = dir.join(format!("{name}.wasm"));
    let manifest = dir.join(format!("{name}.toml"));
    let signature = crate::signature::signature_path(&wasm);
    // Gone: unloaded. An entry that is there but is no plugin file (a
    // directory, a dangling or looping link, a FIFO) goes on to fail its
    // load naming itself, as it would at start, instead of passing for a
    // removal without a word.
    if std::fs::symlink_metadata(&wasm).is_err() {
        if bus.unload_plugin(name).await {
            meta(bus, "plugbus.plugin.unloaded", name, &wasm, None, None);
        }
        forget_failure(bus, &wasm);
        lock(refused).remove(name);
        return true;
    }
    let files = [wasm.as_path(), manifest.as_path(), signature.as_path()];
    let before = fingerprints(&files);
    tokio::time::sleep(SETTLE).await;
    if fingerprints(&files) != before {
        return false;
    }
    if lock(refused).get(name) == Some(&before) {
        tracing::debug!(plugin = name, file = %wasm.display(), "files unchanged since their refusal; not tried again");
        return true;
    }
    lock(refused).remove(name);
    match bus.reload_plugin(&wasm).await {
        Ok((info, Reload::Loaded)) => {
            forget_failure(bus, &wasm);
            meta(bus, "plugbus.plugin.loaded", name, &wasm, Some(&info.version), None);
        }
        Ok((info, Reload::Replaced)) => {
            forget_failure(bus, &wasm);
            meta(bus, "plugbus.plugin.reloaded", name, &wasm, Some(&info.version), None);
        }
        // The running version's files are back (after a refused
        // replacement, say): nothing to reload, and nothing failed.
        Ok((_, Reload::Unchanged)) => forget_failure(bus, &wasm),
        Err(e) => {
            lock(refused).insert(name.to_owned(), before);
            let reason = e.kind.to_string();
            tracing::error!(plugin = name, file = %wasm.display(), error = %reason, "plugin change not applied");
            {
                let mut failures = lock(&bus.shared.load_failures);
                failures.retain(|f| f.path != wasm);
                failures.push(LoadFailure {
                    path: wasm.clone(),
                    reason: reason.clone(),
                });
            }
            meta(bus, "plugbus.plugin.load_failed", name, &wasm, None, Some(&reason));
            if exact && bus.unload_plugin(name).await {
                tracing::warn!(
                    plugin = name,
                    "the running version is unloaded: it is not the directory's (exact versions)"
                );
                meta(bus, "plugbus.plugin.unloaded", name, &wasm, None, Some(&reason));
            }
        }
    }
    true
}

fn forget_failure(bus: &Bus, wasm: &Path) {
    lock(&bus.shared.load_failures).retain(|f| f.path != wasm);
}

fn meta(bus: &Bus, event: &str, name: &str, file: &Path, version: Option<&str>, reason: Option<&str>) {
    bus.emit(
        event,
        json!({ "name": name, "file": file.display().to_string(), "version": version, "reason": reason }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_not_changes() {
        use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
            EventKind::Other,
        ] {
            assert!(!changes_plugin(&kind), "{kind:?}");
        }
        for kind in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(changes_plugin(&kind), "{kind:?}");
        }
    }

    #[test]
    fn only_plugin_files_count() {
        assert_eq!(
            plugin_of(Path::new("/d/cost-tracker.wasm")).as_deref(),
            Some("cost-tracker")
        );
        assert_eq!(
            plugin_of(Path::new("/d/cost-tracker.toml")).as_deref(),
            Some("cost-tracker")
        );
        assert_eq!(plugin_of(Path::new("/d/.cost-tracker.wasm.swp")), None);
        assert_eq!(plugin_of(Path::new("/d/notes.txt")), None);
        assert_eq!(plugin_of(Path::new("/d/x.wasm.part")), None);
        assert_eq!(
            plugin_of(Path::new("/d/cost-tracker.wasm.minisig")).as_deref(),
            Some("cost-tracker")
        );
        assert_eq!(plugin_of(Path::new("/d/cost-tracker.wasm.minisig.tmp")), None);
    }
}
