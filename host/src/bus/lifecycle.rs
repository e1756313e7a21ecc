//! Plugin lifecycle on a bus: load, hot swap, unload, validate.
//!
//! Loading is split in two: `prepare` does the slow, fallible part (read,
//! compile, instantiate, ask for subscriptions) without touching the bus;
//! `spawn` + a registry update make the plugin live. A swap prepares the new
//! version first, so an invalid replacement leaves the old one running, then
//! takes over the old version's place (its seq, so delivery order among
//! handlers is unchanged) and its counters, and starts the new worker only
//! when the old one has drained its queue: no event is lost, duplicated or
//! reordered across the swap.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, oneshot};

use crate::bus::registry::{Entry, Target};
use crate::bus::{Bus, Shared, info, lock};
use crate::dead_letter::DeadLetters;
use crate::manifest::CatchUp;
use crate::pattern::Pattern;
use crate::plugin::catch_up::Cursor;
use crate::plugin::port::BusPort;
use crate::plugin::recovery::{Handoff, KeptState, Snapshot};
use crate::plugin::worker::{PluginHandle, Worker, WorkerState};
use crate::plugin::{Instance, LoadError, LoadErrorKind, PluginCheck, PluginInfo, PluginSpec};
use crate::stats::StatsCell;

/// The narrow handle plugin code gets to the bus.
fn port(shared: &Arc<Shared>) -> Weak<dyn BusPort> {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    weak
}

/// A plugin ready to go live.
struct Prepared {
    spec: PluginSpec,
    instance: Instance,
    patterns: Vec<Pattern>,
}

/// A bus that shut down installs nothing more: checked before a compile,
/// and again under the lifecycle lock (a compile outlasts a shutdown).
fn refuse_if_closed(shared: &Shared, path: &Path) -> Result<(), LoadError> {
    if shared.closed.load(Ordering::Acquire) {
        return Err(LoadError {
            path: path.to_owned(),
            kind: LoadErrorKind::Closed,
        });
    }
    Ok(())
}

async fn prepare(shared: &Arc<Shared>, path: &Path) -> Result<Prepared, LoadError> {
    let err = |kind| LoadError {
        path: path.to_owned(),
        kind,
    };
    refuse_if_closed(shared, path)?;
    let spec = PluginSpec::load(
        &shared.engine,
        path,
        &shared.limits,
        (&shared.signatures, shared.policy.as_ref()),
        &shared.http,
        port(shared),
    )
    .await?;
    let mut instance = spec
        .instantiate()
        .await
        .map_err(|e| err(LoadErrorKind::Start(e.failure)))?;
    let patterns = spec.subscriptions(&mut instance).await.map_err(err)?;
    Ok(Prepared {
        spec,
        instance,
        patterns,
    })
}

/// What a plugin finds beside the log when it starts, read off the async
/// runtime before its worker is spawned.
struct Kept {
    dead_letters: Arc<DeadLetters>,
    /// The snapshot to resume from.
    resume: Option<Snapshot>,
    /// The state must be rebuilt from the whole log (the kept snapshot is
    /// damaged, or past the log's end).
    rebuild: bool,
}

/// Reads a plugin's dead letters (a hot-swapped version shares its
/// predecessor's, which may still add some as it drains) and, for a plugin
/// with `state` that is not a hot-swapped version (that one takes its
/// predecessor's state), its kept snapshot. A snapshot a redrive committed removes its letters here; a
/// snapshot that fails its checksum, or records a position past the end of
/// the log (the log lost a tail it never made durable), is not used: the
/// state is rebuilt from the log instead.
async fn read_kept(shared: &Shared, spec: &crate::plugin::PluginSpec, predecessor: Option<&PluginHandle>) -> Kept {
    if let Some(old) = predecessor {
        return Kept {
            dead_letters: old.dead_letters.clone(),
            resume: None,
            rebuild: false,
        };
    }
    let Some(log) = shared.state_log() else {
        return Kept {
            dead_letters: Arc::new(DeadLetters::in_memory()),
            resume: None,
            rebuild: false,
        };
    };
    let dir = log.dir().to_owned();
    let sync = log.options().durability != crate::Durability::Off;
    let name = spec.name.to_string();
    let stateful = spec.has_state();
    let end = shared.snapshot_end(log, &name);
    let read = tokio::task::spawn_blocking(move || {
        let dead_letters = DeadLetters::open(&name, &dir, sync);
        if !stateful {
            return (dead_letters, Ok(None));
        }
        let snapshot = crate::plugin::recovery::load(&crate::plugin::recovery::snapshot_path(&dir, &name));
        if let Ok(Some(s)) = &snapshot
            && !s.letters.is_empty()
            && let Err(e) = dead_letters.remove(&s.letters)
        {
            tracing::error!(plugin = name, error = %e, "cannot remove the letters the kept snapshot applied");
        }
        (dead_letters, snapshot)
    })
    .await;
    let (dead_letters, snapshot) = match read {
        Ok((letters, snapshot)) => (Arc::new(letters), snapshot),
        Err(e) => (
            Arc::new(DeadLetters::in_memory()),
            Err(format!("reading the kept state failed: {e}")),
        ),
    };
    let name = &*spec.name;
    let (resume, rebuild) = match snapshot {
        Ok(Some(s)) if s.seq.is_some_and(|seq| seq > end) => {
            tracing::warn!(plugin = name, snapshot_seq = ?s.seq, log_end = end, "kept snapshot is past the end of the log; rebuilding the state from the log");
            (None, true)
        }
        Ok(resume) => (resume, false),
        Err(reason) => {
            tracing::warn!(plugin = name, %reason, "kept snapshot unusable; rebuilding the state from the log");
            (None, true)
        }
    };
    Kept {
        dead_letters,
        resume,
        rebuild,
    }
}

/// Starts the plugin's worker (held at `gate`, if any: a hot swap) and
/// returns its handle. When the plugin catches up with the log, returns the
/// two ends of the install handshake too (see `catch_up`).
fn spawn(
    shared: &Arc<Shared>,
    prepared: Prepared,
    kept: Kept,
    seq: u64,
    stats: Arc<StatsCell>,
    gate: Option<oneshot::Receiver<Option<Handoff>>>,
) -> (Arc<PluginHandle>, Option<Handshake>) {
    // A stateful plugin on a bus with a log resumes from the snapshot a
    // previous run kept there, then catches up from just after it. A
    // hot-swapped version takes its predecessor's state instead (`gate`).
    let Kept {
        dead_letters,
        resume,
        rebuild,
    } = kept;
    let mode = if rebuild {
        CatchUp::All
    } else {
        prepared.spec.manifest.replay
    };
    let initial_snapshot = prepared.spec.has_state() && mode == CatchUp::None && resume.is_none();
    // Installed while the bus starts (`bus::startup`): the events accepted
    // since the first one are read from the log before the live ones.
    // Those events are new to the plugin whatever else it reads first.
    let live_from = shared.startup.floor().filter(|_| gate.is_none());
    let floor = live_from.filter(|_| mode == CatchUp::None && resume.is_none());
    let (plan, handshake) = match shared.state_log() {
        Some(log)
            if gate.is_none() && (mode != CatchUp::None || resume.is_some() || initial_snapshot || floor.is_some()) =>
        {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (cut_tx, cut_rx) = oneshot::channel();
            let mut cursor = Cursor::new(log, mode, prepared.patterns.clone());
            if let Some(seq) = resume.as_ref().and_then(|s| s.seq) {
                cursor = cursor.resuming_at(seq + 1);
            }
            if initial_snapshot {
                // Nothing to read before the worker fixes its start (the
                // log's end then, or just before the start-up floor) with a
                // kept snapshot: see `catch_up`.
                cursor = cursor.starting_at(u64::MAX);
            } else if let Some(floor) = floor {
                cursor = cursor.starting_at(floor);
            }
            let plan = crate::plugin::catch_up::Plan {
                log: log.clone(),
                cursor,
                ready: ready_tx,
                cut: cut_rx,
                initial_snapshot: initial_snapshot.then(|| floor.map(|f| f - 1)),
                live_from,
            };
            (
                Some(plan),
                Some(Handshake {
                    ready: ready_rx,
                    cut: cut_tx,
                }),
            )
        }
        _ => (None, None),
    };
    let spec = Arc::new(prepared.spec);
    let (tx, rx) = mpsc::channel(spec.limits.queue_capacity);
    let (queries_tx, queries_rx) = mpsc::channel(crate::query::QUERY_QUEUE);
    let (stop_tx, stop_rx) = oneshot::channel();
    let state = Arc::new(WorkerState::default());
    {
        let mut workers = lock(&shared.workers);
        workers.retain(|(_, w)| w.strong_count() > 0);
        workers.push((spec.name.to_string(), Arc::downgrade(&state)));
    }
    if gate.is_some() {
        state.hold_every_request();
    }
    if let Some(log) = shared.state_log() {
        // A full queue leaves its events in the log, read back by the worker.
        state.overflow.enable(log.clone());
    }
    let handoff = Arc::new(Mutex::new(None));
    let worker = Worker::new(
        spec.clone(),
        prepared.instance,
        stats.clone(),
        state.clone(),
        port(shared),
        dead_letters.clone(),
        KeptState {
            resume,
            handoff: handoff.clone(),
            log: shared.state_log().cloned(),
            patterns: prepared.patterns.clone(),
        },
    );
    let task = shared.runtime.spawn(worker.run(rx, queries_rx, stop_rx, gate, plan));
    let handle = Arc::new(PluginHandle {
        spec,
        seq,
        subscriptions: prepared.patterns.iter().map(|p| p.as_str().to_owned()).collect(),
        tx,
        queries: queries_tx,
        stats,
        state,
        dead_letters,
        handoff,
        reload_error: Mutex::new(None),
        stop: Mutex::new(Some(stop_tx)),
        task: Mutex::new(Some(task)),
    });
    (handle, handshake)
}

/// The bus's side of a catch-up: the worker says when history is done, the
/// bus answers with the cut.
struct Handshake {
    ready: oneshot::Receiver<()>,
    cut: oneshot::Sender<u64>,
}

/// Makes `handle` reachable: registry (under the publish lock) and by name.
/// A plugin catching up is registered once its worker has handled the bulk
/// of the log, and told the cut.
async fn publish_handle(
    shared: &Shared,
    handle: &Arc<PluginHandle>,
    patterns: &[Pattern],
    handshake: Option<Handshake>,
) {
    let handshake = match handshake {
        Some(h) => {
            // An error means the worker ended early: register all the same.
            let _ = h.ready.await;
            Some(h.cut)
        }
        None => None,
    };
    let entry = Entry {
        seq: handle.seq,
        priority: 0,
        target: Target::Plugin(handle.clone()),
    };
    let cut = shared.update_registry_at(|r| {
        r.remove(handle.seq);
        r.insert(patterns, entry);
    });
    if let Some(tx) = handshake {
        let _ = tx.send(cut);
    }
    lock(&shared.plugins).insert(handle.spec.name.to_string(), handle.clone());
}

/// Makes a plugin that is not loaded yet live, with fresh counters. The
/// caller holds the lifecycle lock and has checked the name is free.
async fn install_new(shared: &Arc<Shared>, prepared: Prepared, path: &Path) -> Arc<PluginHandle> {
    let seq = shared.next_entry.fetch_add(1, Ordering::Relaxed);
    let patterns = prepared.patterns.clone();
    let kept = read_kept(shared, &prepared.spec, None).await;
    let (handle, handshake) = spawn(shared, prepared, kept, seq, Arc::new(StatsCell::default()), None);
    publish_handle(shared, &handle, &patterns, handshake).await;
    #[cfg(feature = "nats")]
    if let Some(nats) = &shared.nats {
        nats.start_consumer(
            &handle.spec.name,
            patterns,
            handle.spec.limits.queue_capacity,
            matches!(handle.spec.manifest.replay, crate::manifest::CatchUp::All),
            handle.spec.manifest.ordered,
            Arc::downgrade(shared) as std::sync::Weak<dyn crate::nats::port::NatsPort>,
        )
        .await;
    }
    tracing::info!(plugin = &*handle.spec.name, file = %path.display(), subscriptions = ?handle.subscriptions, "plugin loaded");
    handle
}

/// What [`Bus::reload_plugin`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// No plugin of that name was loaded; it is now.
    Loaded,
    /// The running version was replaced.
    Replaced,
    /// The file and manifest are the ones already running: nothing to do.
    Unchanged,
}

impl Bus {
    /// Loads one plugin (and its manifest, `<name>.toml` beside it).
    /// Compilation runs on a blocking thread. The plugin receives events
    /// published after this returns.
    ///
    /// # Errors
    /// [`LoadError`] naming the file and the reason: not wasm, a core module,
    /// invalid, the wrong world, a bad manifest, a failure while starting,
    /// or a name already loaded.
    pub async fn load_plugin(&self, path: impl AsRef<Path>) -> Result<PluginInfo, LoadError> {
        let path = path.as_ref();
        let shared = &self.shared;
        let prepared = prepare(shared, path).await?;
        let _serial = shared.lifecycle.lock().await;
        refuse_if_closed(shared, path)?;
        let name = prepared.spec.name.to_string();
        if lock(&shared.plugins).contains_key(&name) {
            return Err(LoadError {
                path: path.to_owned(),
                kind: LoadErrorKind::AlreadyLoaded(name),
            });
        }
        Ok(info(&*install_new(shared, prepared, path).await))
    }

    /// Loads the plugin at `path`, or hot-swaps it if a plugin of that name is
    /// running. The new version is fully prepared first; events queued for
    /// the old version are finished by it, later ones go to the new one, and
    /// the plugin's counters carry over. A file and manifest identical to
    /// the running ones are left alone.
    ///
    /// # Errors
    /// [`LoadError`] if the new version cannot be loaded; the old version, if
    /// any, keeps running and [`PluginInfo::reload_error`] says why.
    pub async fn reload_plugin(&self, path: impl AsRef<Path>) -> Result<(PluginInfo, Reload), LoadError> {
        let path = path.as_ref();
        let shared = &self.shared;
        let prepared = match prepare(shared, path).await {
            Ok(p) => p,
            Err(e) => {
                let running = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|n| lock(&shared.plugins).get(n).cloned());
                if let Some(old) = running {
                    *lock(&old.reload_error) = Some(e.to_string());
                    tracing::error!(plugin = &*old.spec.name, file = %path.display(), error = %e.kind, "reload failed; the running version stays");
                }
                return Err(e);
            }
        };
        let _serial = shared.lifecycle.lock().await;
        refuse_if_closed(shared, path)?;
        let name = prepared.spec.name.to_string();
        let Some(old) = lock(&shared.plugins).get(&name).cloned() else {
            return Ok((info(&*install_new(shared, prepared, path).await), Reload::Loaded));
        };
        if old.spec.version == prepared.spec.version
            && old.spec.manifest_version == prepared.spec.manifest_version
            && old.spec.signer == prepared.spec.signer
            // A granted directory replaced since: the new load pinned (and
            // the policy allowed) what is there now.
            && old.spec.dirs == prepared.spec.dirs
        {
            *lock(&old.reload_error) = None;
            return Ok((info(&old), Reload::Unchanged));
        }
        let (gate_tx, gate_rx) = oneshot::channel();
        let patterns = prepared.patterns.clone();
        let kept = read_kept(shared, &prepared.spec, Some(&old)).await;
        let (new, handshake) = spawn(shared, prepared, kept, old.seq, old.stats.clone(), Some(gate_rx));
        publish_handle(shared, &new, &patterns, handshake).await;
        // From here on no publish reaches the old queue; let it drain, then
        // open the gate for the new version.
        old.stop_and_join().await;
        // The old version left its state: the new one starts from it.
        let state = lock(&old.handoff).take();
        let _ = gate_tx.send(state);
        // On NATS: the consumer matches each message against the running
        // version; one whose filter, queue or ordering changed is re-created.
        #[cfg(feature = "nats")]
        if let Some(nats) = &shared.nats {
            let manifest = &new.spec.manifest;
            let replay_all = matches!(manifest.replay, CatchUp::All);
            let port = Arc::downgrade(shared) as Weak<dyn crate::nats::port::NatsPort>;
            let capacity = new.spec.limits.queue_capacity;
            nats.start_consumer(&name, patterns, capacity, replay_all, manifest.ordered, port)
                .await;
        }
        tracing::info!(plugin = %name, file = %path.display(), from = &old.spec.version[..12], to = &new.spec.version[..12], "plugin replaced");
        Ok((info(&new), Reload::Replaced))
    }

    /// Unloads a plugin: it stops receiving events, finishes what is queued,
    /// and its instance is dropped. Returns false if no plugin has that name.
    pub async fn unload_plugin(&self, name: &str) -> bool {
        let shared = &self.shared;
        let _serial = shared.lifecycle.lock().await;
        // On NATS: stop pulling first; what was taken finishes and is acked.
        #[cfg(feature = "nats")]
        if let Some(nats) = &shared.nats {
            nats.stop_consumer(name).await;
        }
        let Some(handle) = lock(&shared.plugins).remove(name) else {
            return false;
        };
        shared.remove(handle.seq);
        handle.stop_and_join().await;
        // It no longer holds the log's retention back.
        BusPort::snapshot_kept(&**shared, name, None);
        tracing::info!(plugin = name, "plugin unloaded");
        true
    }

    /// Validates one plugin file without adding it to the bus: compiles it,
    /// instantiates it and asks for its subscriptions.
    ///
    /// # Errors
    /// The same [`LoadError`]s as [`load_plugin`](Self::load_plugin).
    pub async fn check_plugin(&self, path: impl AsRef<Path>) -> Result<PluginCheck, LoadError> {
        let prepared = prepare(&self.shared, path.as_ref()).await?;
        Ok(prepared.spec.check(&prepared.patterns))
    }
}
