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
//! Each change is announced on the bus as a meta-event:
//! `plugbus.plugin.loaded`, `.reloaded`, `.unloaded` or `.load_failed`,
//! with payload `{name, file, version, reason}`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher as _};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::bus::lifecycle::Reload;
use crate::bus::{Bus, LoadFailure, Shared, lock};

/// Quiet time after the last file event before acting. Long enough to
/// coalesce the burst of events one copy or rename produces, short enough
/// to feel immediate.
pub const DEBOUNCE: Duration = Duration::from_millis(250);
/// Size and mtime must hold still this long before a file is read.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Keeps the watcher running; dropping it stops watching.
pub(crate) struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
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
    let (tx, rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
        Err(e) => tracing::warn!(error = %e, "plugin directory watch error"),
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = runtime.spawn(run(shared, dir, exact, rx, stop_rx));
    Ok(WatchHandle {
        _watcher: watcher,
        stop: Some(stop_tx),
        task,
    })
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
    dir: PathBuf,
    exact: bool,
    mut rx: mpsc::UnboundedReceiver<PathBuf>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut pending: HashMap<String, Instant> = HashMap::new();
    loop {
        let next_due = pending.values().min().map(|t| *t + DEBOUNCE);
        tokio::select! {
            _ = &mut stop => return,
            path = rx.recv() => match path {
                Some(path) => {
                    if let Some(name) = plugin_of(&path) {
                        pending.insert(name, Instant::now());
                    }
                    continue;
                }
                None => return,
            },
            _ = sleep_until(next_due) => {}
        }
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, t)| t.elapsed() >= DEBOUNCE)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            pending.remove(&name);
            let Some(shared) = shared.upgrade() else { return };
            let bus = Bus { shared };
            if !apply(&bus, &dir, &name, exact).await {
                // Still being written: look again after another quiet period.
                pending.insert(name, Instant::now());
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn fingerprint(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Brings plugin `name` in line with the directory. Returns false when its
/// files are still changing. With `exact`, a change that cannot be loaded
/// unloads the running version (the directory's version or none).
async fn apply(bus: &Bus, dir: &Path, name: &str, exact: bool) -> bool {
    let wasm = dir.join(format!("{name}.wasm"));
    let manifest = dir.join(format!("{name}.toml"));
    let signature = crate::signature::signature_path(&wasm);
    if !wasm.is_file() {
        if bus.unload_plugin(name).await {
            meta(bus, "plugbus.plugin.unloaded", name, &wasm, None, None);
        }
        forget_failure(bus, &wasm);
        return true;
    }
    let before = (fingerprint(&wasm), fingerprint(&manifest), fingerprint(&signature));
    tokio::time::sleep(SETTLE).await;
    if (fingerprint(&wasm), fingerprint(&manifest), fingerprint(&signature)) != before {
        return false;
    }
    match bus.reload_plugin(&wasm).await {
        Ok((info, Reload::Loaded)) => {
            forget_failure(bus, &wasm);
            meta(bus, "plugbus.plugin.loaded", name, &wasm, Some(&info.version), None);
        }
        Ok((info, Reload::Replaced)) => {
            forget_failure(bus, &wasm);
            meta(bus, "plugbus.plugin.reloaded", name, &wasm, Some(&info.version), None);
        }
        Ok((_, Reload::Unchanged)) => {}
        Err(e) => {
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
