//! Configuring a bus: raw settings are collected by [`BusBuilder`], then
//! resolved (cache location, queue capacity, plugin files) before anything
//! starts; only then is the bus created, the directory watched and the
//! plugins loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::runtime::Handle;

use crate::bus::history::History;
use crate::bus::{Bus, FailureHook, LoadFailure, Parts, Shared, lock};
use crate::error::Error;
use crate::event::Event;
use crate::limits::Limits;
use crate::log::{Durability, EventLog, LogOptions};
use crate::outcome::Failure;
use crate::plugin::engine::PluginEngine;

/// Where compiled artifacts are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CacheSetting {
    Default,
    Dir(PathBuf),
    Off,
}

/// Where a replay finds the live run's request journal.
pub(crate) enum ReplayJournal {
    /// The file journal of this log directory, opened read-only.
    Log(PathBuf),
    /// One already opened (a NATS stream's bucket, read-only).
    #[cfg(feature = "nats")]
    Opened(crate::http::RequestJournal),
}

/// Configures and builds a [`Bus`].
#[must_use]
pub struct BusBuilder {
    plugin_dir: Option<PathBuf>,
    watch: bool,
    exact_versions: bool,
    cache: CacheSetting,
    pub(crate) limits: Limits,
    queue_capacity: Option<usize>,
    history: usize,
    on_failure: Option<FailureHook>,
    log_dir: Option<PathBuf>,
    log_options: LogOptions,
    pub(crate) follow_ups: crate::plugin::port::FollowUps,
    /// False on a replay's bus: plugins keep no state beside the log.
    pub(crate) keep_plugin_state: bool,
    schemas: Vec<(String, serde_json::Value)>,
    schema_dirs: Vec<PathBuf>,
    schema_policy: crate::SchemaPolicy,
    trusted_keys: Option<PathBuf>,
    require_signed: bool,
    policy: Option<PathBuf>,
    /// Set by a replay: answer plugins' requests from the live run's
    /// journal; `true`: send those it has no answer for.
    pub(crate) replay_requests: Option<(ReplayJournal, bool)>,
    #[cfg(feature = "nats")]
    pub(crate) nats: Option<crate::nats::NatsOptions>,
}

impl Bus {
    /// Starts configuring a bus.
    pub fn builder() -> BusBuilder {
        BusBuilder::new()
    }
}

impl BusBuilder {
    pub(crate) fn new() -> BusBuilder {
        BusBuilder {
            plugin_dir: None,
            watch: false,
            exact_versions: false,
            cache: CacheSetting::Default,
            limits: Limits::default(),
            queue_capacity: None,
            history: 0,
            on_failure: None,
            schemas: Vec::new(),
            schema_dirs: Vec::new(),
            schema_policy: crate::SchemaPolicy::default(),
            log_dir: None,
            log_options: LogOptions::default(),
            follow_ups: crate::plugin::port::FollowUps::Publish,
            keep_plugin_state: true,
            trusted_keys: None,
            require_signed: false,
            policy: None,
            replay_requests: None,
            #[cfg(feature = "nats")]
            nats: None,
        }
    }

    /// Loads every `*.wasm` in `dir` (in name order) when the bus is built.
    /// A file that fails to load is logged and listed in
    /// [`Bus::load_failures`]; the others load normally.
    pub fn plugin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.plugin_dir = Some(dir.into());
        self
    }

    /// Watches the plugin directory while the bus runs: new `.wasm` files
    /// are loaded, replaced ones hot-swapped (after the new version
    /// validates), removed ones unloaded, and manifest changes reload their
    /// plugin. A plugin receives the events published after it is ready.
    /// Each change is announced as a `plugbus.plugin.*` meta-event.
    /// Requires [`plugin_dir`](Self::plugin_dir).
    pub fn watch(mut self, enable: bool) -> Self {
        self.watch = enable;
        self
    }

    /// With [`watch`](Self::watch): a changed plugin that cannot be loaded
    /// (refused signature, wrong world, bad manifest…) unloads the running
    /// version instead of leaving it in place, so the bus runs the
    /// directory's version of each plugin or none. Off by default (a
    /// botched local edit should not stop a working plugin); `plugbus serve
    /// --fleet` turns it on, since there the other hosts run the
    /// directory's version and this one must not handle the plugin's
    /// stream with other code.
    pub fn exact_versions(mut self, enable: bool) -> Self {
        self.exact_versions = enable;
        self
    }

    /// Caches compiled plugins in `dir` instead of the platform default
    /// ([`default_cache_dir`](crate::default_cache_dir)). Cold compiles take
    /// 50 ms for a small Rust plugin and seconds for interpreted ones; a
    /// cached load skips Cranelift entirely.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = CacheSetting::Dir(dir.into());
        self
    }

    /// Trusts the minisign public keys at `path` (a `.pub` file, or every
    /// `*.pub` in a directory) to sign plugins: a plugin with a signature
    /// beside it (`name.wasm.minisig`) is loaded only if one of them signed
    /// exactly its bytes, on every load and hot reload (see
    /// [`crate::signature`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), plugbus::Error> {
    /// let bus = plugbus::Bus::builder()
    ///     .plugin_dir("plugins")
    ///     .trusted_keys("/etc/plugbus/trusted-keys")
    ///     .require_signed(true)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn trusted_keys(mut self, path: impl Into<PathBuf>) -> Self {
        self.trusted_keys = Some(path.into());
        self
    }

    /// Refuses plugins without a valid signature by a trusted key (needs
    /// [`trusted_keys`](Self::trusted_keys)). A refused plugin is listed in
    /// [`Bus::load_failures`] with the reason; a refused hot-reload leaves
    /// the running version in place.
    pub fn require_signed(mut self, require: bool) -> Self {
        self.require_signed = require;
        self
    }

    /// Bounds what plugin manifests may grant (directories, catch-up,
    /// limits above the defaults) with the capability policy in `path`, a
    /// TOML file read when the bus is built (see [`crate::policy`]). A
    /// manifest asking for more than its rule allows is refused like any
    /// bad plugin, naming the rule.
    pub fn policy(mut self, path: impl Into<PathBuf>) -> Self {
        self.policy = Some(path.into());
        self
    }

    /// Turns the compiled-artifact cache off: every load compiles.
    pub fn no_cache(mut self) -> Self {
        self.cache = CacheSetting::Off;
        self
    }

    /// Limits for every plugin (a plugin's manifest may override them).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Queue capacity per plugin (overrides `limits.queue_capacity`; at least 1).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity);
        self
    }

    /// Keeps the last `n` events for [`Bus::history`]. Default 0 (off).
    pub fn history(mut self, n: usize) -> Self {
        self.history = n;
        self
    }

    /// Keeps an event log in `dir` (created if missing): every published
    /// event (the host's, plugins' follow-ups, meta-events) is appended in
    /// publish order and numbered ([`Event::seq`]), numbering continuing
    /// from the events already there. See [`crate::log`] for the format and
    /// exactly what each durability policy promises.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// How the log is written (durability, buffer, segments, retention).
    pub fn log_options(mut self, options: LogOptions) -> Self {
        self.log_options = options;
        self
    }

    pub(crate) fn clear_plugin_dir(&mut self) {
        self.plugin_dir = None;
    }

    pub(crate) fn clear_log_dir(&mut self) {
        self.log_dir = None;
    }

    /// Shorthand for setting only the log's durability policy.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.log_options.durability = durability;
        self
    }

    /// Shorthand for setting only the group-sync period under
    /// [`Durability::Batched`] ([`LogOptions::sync_interval`], default
    /// 5 ms): the longest a plain emit stays unsynced. Durable emits do not
    /// wait for it (their sync comes at most 1 ms after the last one).
    pub fn sync_interval(mut self, period: std::time::Duration) -> Self {
        self.log_options.sync_interval = period;
        self
    }

    /// Shorthand for setting only the log's retention
    /// ([`LogOptions::retention_bytes`], [`LogOptions::retention_age`]):
    /// the oldest segments are removed while the log is larger than
    /// `bytes`, and once their last event is older than `age` (unless a kept
    /// plugin snapshot still needs them). The request journal is compacted
    /// with it. `None`: no limit (the default).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), plugbus::Error> {
    /// let week = std::time::Duration::from_secs(7 * 86_400);
    /// let bus = plugbus::Bus::builder().log_dir("agent-log").retention(Some(10 << 30), Some(week)).build().await?;
    /// # Ok(()) }
    /// ```
    pub fn retention(mut self, bytes: Option<u64>, age: Option<std::time::Duration>) -> Self {
        self.log_options.retention_bytes = bytes;
        self.log_options.retention_age = age;
        self
    }

    /// Shorthand for setting only the size at which a log segment is closed
    /// and the next begun ([`LogOptions::segment_bytes`], default 64 MiB):
    /// retention removes whole segments, so this is its granularity.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.log_options.segment_bytes = bytes;
        self
    }

    /// Called on every hard failure of a native handler or plugin, after it
    /// is logged. Runs on the thread that saw the failure; keep it short. A
    /// panic inside it is caught.
    pub fn on_failure(mut self, hook: impl Fn(&Event, &str, &Failure) + Send + Sync + 'static) -> Self {
        self.on_failure = Some(Arc::new(hook));
        self
    }

    /// Builds the bus: creates the engine and loads the plugin directory.
    ///
    /// # Errors
    /// [`Error::PluginDir`] if the directory cannot be read,
    /// [`Error::Engine`] if wasmtime cannot start, [`Error::NoRuntime`]
    /// outside a tokio runtime. Individual bad plugins are not errors.
    /// Checks every event named `name` against the JSON Schema `schema` at
    /// emit (see [`crate::schema`]). A later schema for the same name
    /// replaces an earlier one.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), plugbus::Error> {
    /// let bus = plugbus::Bus::builder()
    ///     .schema("model_responded", serde_json::json!({"type": "object", "required": ["usage"]}))
    ///     .build()
    ///     .await?;
    /// assert!(bus.try_emit("model_responded", serde_json::json!({})).is_err());
    /// # Ok(()) }
    /// ```
    pub fn schema(mut self, name: impl Into<String>, schema: serde_json::Value) -> Self {
        self.schemas.push((name.into(), schema));
        self
    }

    /// Loads every `<event-name>.schema.json` file of `dir` as
    /// [`schema`](Self::schema) does (read when the bus is built).
    pub fn schema_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.schema_dirs.push(dir.into());
        self
    }

    /// What plain `emit` does with an event its schema refuses (default:
    /// [`SchemaPolicy::Reject`](crate::SchemaPolicy::Reject)).
    pub fn schema_policy(mut self, policy: crate::SchemaPolicy) -> Self {
        self.schema_policy = policy;
        self
    }

    /// Compiles the schemas: `None` when there are none (the emit path then
    /// never looks).
    fn compile_schemas(&self) -> Result<Option<crate::schema::Schemas>, Error> {
        let mut all = Vec::new();
        for dir in &self.schema_dirs {
            all.extend(crate::schema::read_dir(dir)?);
        }
        all.extend(self.schemas.iter().cloned());
        if all.is_empty() {
            return Ok(None);
        }
        let mut by_name = std::collections::HashMap::new();
        for (name, schema) in all {
            let validator = crate::schema::compile(&name, &schema)?;
            by_name.insert(name, validator);
        }
        Ok(Some(crate::schema::Schemas::new(by_name, self.schema_policy)))
    }

    /// Joins a NATS JetStream stream (see [`crate::nats`]); not together
    /// with [`log_dir`](Self::log_dir) (the stream is the one history). Events go to the
    /// stream, and each plugin pulls its share from a durable consumer
    /// shared with every other host that loads it.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), plugbus::Error> {
    /// let bus = plugbus::Bus::builder()
    ///     .plugin_dir("plugins/dist")
    ///     .nats(plugbus::NatsOptions::new("nats://127.0.0.1:4222"))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "nats")]
    pub fn nats(mut self, options: crate::nats::NatsOptions) -> BusBuilder {
        self.nats = Some(options);
        self
    }

    /// Builds the bus: opens the log or joins NATS, watches the directory
    /// if asked, and loads the plugins (a plugin that fails to load is
    /// listed in [`Bus::load_failures`], not an error). Returns once every
    /// plugin is loaded or refused; [`start`](Self::start) returns before.
    ///
    /// # Errors
    /// [`Error::LogWithNats`] when both an event log and NATS are asked for
    /// (checked first: nothing is opened); [`Error::Nats`] naming the URL or
    /// the stream; [`Error::Signature`] for unreadable trusted keys, or
    /// signatures required without any; [`Error::Policy`] for a policy file
    /// that cannot be used; [`Error::Log`], [`Error::Schema`], [`Error::PluginDir`],
    /// [`Error::Engine`], [`Error::Watch`], [`Error::NoRuntime`].
    pub async fn build(self) -> Result<Bus, Error> {
        let (bus, files) = self.open().await?;
        load_all(&bus, files).await;
        Ok(bus)
    }

    /// Like [`build`](Self::build), but returns as soon as the bus accepts
    /// events: the plugins of the directory load in the background, as many
    /// at once as there are cores ([`Bus::startup`] says which are still
    /// loading, [`Bus::ready`] waits for them). With a log and kept plugin
    /// state, an event accepted meanwhile reaches every plugin of the
    /// directory all the same: each reads the log from the first event
    /// accepted before it goes live (`bus::startup`). Without, such an event
    /// reaches only the plugins loaded by then
    /// ([`StartupStatus::catches_up`](crate::StartupStatus::catches_up) is false).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let bus = plugbus::Bus::builder().log_dir(dir.path()).start().await.unwrap();
    /// bus.publish_durable(plugbus::Event::new("agent.started", serde_json::Value::Null))
    ///     .await
    ///     .unwrap();
    /// assert!(bus.ready().await.ready);
    /// # });
    /// ```
    ///
    /// # Errors
    /// As for [`build`](Self::build): everything but the plugins themselves
    /// is resolved before it returns.
    pub async fn start(self) -> Result<Bus, Error> {
        let (bus, files) = self.open().await?;
        let shared = &bus.shared;
        let floor = shared.state_log().map(|log| log.last_seq() + 1);
        shared.startup.begin(&files, floor);
        if files.is_empty() {
            shared.startup.finish();
            return Ok(bus);
        }
        let loading = bus.clone();
        let task = shared.runtime.spawn(async move {
            load_all(&loading, files).await;
        });
        shared.startup.set_loader(task.abort_handle());
        Ok(bus)
    }

    /// Everything but the plugins: the bus, and the plugin files to load.
    async fn open(mut self) -> Result<(Bus, Vec<PathBuf>), Error> {
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        // One history: on NATS, the stream (see `Error::LogWithNats`).
        #[cfg(feature = "nats")]
        if self.log_dir.is_some() && self.nats.is_some() {
            return Err(Error::LogWithNats);
        }
        let schemas = self.compile_schemas()?;
        let keys = match &self.trusted_keys {
            Some(path) => Some(crate::signature::TrustedKeys::read(path)?),
            None => None,
        };
        let signatures = Arc::new(crate::signature::SignaturePolicy::new(keys, self.require_signed)?);
        let policy = match &self.policy {
            Some(path) => Some(crate::policy::Policy::read(path)?),
            None => None,
        };
        let mut limits = self.limits;
        if let Some(q) = self.queue_capacity {
            limits.queue_capacity = q;
        }
        limits.queue_capacity = limits.queue_capacity.max(1);
        let files = match &self.plugin_dir {
            Some(dir) => wasm_files(dir).map_err(|source| Error::PluginDir {
                path: dir.clone(),
                source,
            })?,
            None => Vec::new(),
        };
        let cache_root = match self.cache {
            CacheSetting::Default => crate::cache::default_cache_dir(),
            CacheSetting::Dir(dir) => Some(dir),
            CacheSetting::Off => None,
        };
        let engine = PluginEngine::new(cache_root.as_deref()).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let history = (self.history > 0).then(|| History::new(self.history));
        let log_dir = self.log_dir.clone();
        let journal_sync = self.log_options.durability != crate::log::Durability::Off;
        let mut kept_snapshots = std::collections::BTreeMap::new();
        let log = match self.log_dir {
            Some(dir) => {
                let mut options = self.log_options;
                let keep_state = self.keep_plugin_state;
                let dir_for_floor = dir.clone();
                // Retention keeps what the kept snapshots still need (their
                // plugins resume from just after them) from the start, and
                // for every plugin whose snapshot is there, loaded yet or
                // not (still compiling, or failing to load this run).
                if keep_state {
                    kept_snapshots =
                        tokio::task::spawn_blocking(move || crate::plugin::recovery::kept_positions(&dir_for_floor))
                            .await
                            .unwrap_or_default();
                    options.retention_floor = options
                        .retention_floor
                        .max(crate::plugin::recovery::floor_of(&kept_snapshots));
                }
                // Opening checks the last segment: file I/O, off the runtime.
                let log = tokio::task::spawn_blocking(move || EventLog::open(dir, options))
                    .await
                    .map_err(|e| Error::Engine(format!("log open task failed: {e}")))??;
                Some(log)
            }
            None => None,
        };
        // After the log: opening it creates its directory.
        #[cfg_attr(not(feature = "nats"), allow(unused_mut))]
        let mut http = match (self.replay_requests.take(), &log_dir) {
            (Some((journal, live)), _) => crate::http::send::HttpSetup {
                journal: match journal {
                    ReplayJournal::Log(dir) => {
                        tokio::task::spawn_blocking(move || crate::http::RequestJournal::open_read_only(&dir))
                            .await
                            .map_err(|e| Error::Engine(format!("journal open task failed: {e}")))??
                    }
                    #[cfg(feature = "nats")]
                    ReplayJournal::Opened(journal) => journal,
                },
                replay_run: true,
                live_in_replay: live,
            },
            (None, Some(dir)) if self.keep_plugin_state => {
                let (dir, sync) = (dir.clone(), journal_sync);
                crate::http::send::HttpSetup {
                    journal: tokio::task::spawn_blocking(move || crate::http::RequestJournal::open(&dir, sync))
                        .await
                        .map_err(|e| Error::Engine(format!("journal open task failed: {e}")))??,
                    ..Default::default()
                }
            }
            _ => crate::http::send::HttpSetup::default(),
        };
        #[cfg(feature = "nats")]
        let nats = match self.nats {
            Some(options) => Some(crate::nats::NatsLink::connect(options).await?),
            None => None,
        };
        // On NATS a live bus's requests are journaled in the stream's bucket,
        // shared by every host (a replay's bus has its journal already).
        #[cfg(feature = "nats")]
        if let Some(link) = &nats
            && !http.replay_run
            && self.keep_plugin_state
        {
            http.journal = link.request_journal().await?;
        }
        let parts = Parts {
            #[cfg(feature = "nats")]
            nats,
            engine,
            limits,
            history,
            on_failure: self.on_failure,
            runtime,
            log: log.clone(),
            keep_plugin_state: self.keep_plugin_state,
            kept_snapshots,
            follow_ups: self.follow_ups,
            schemas,
            signatures,
            policy,
            http,
        };
        let bus = Bus {
            shared: Arc::new_cyclic(|me| Shared::new(parts, me.clone())),
        };
        if let Some(log) = &log {
            crate::bus::retention::watch(&bus.shared, log);
            let weak = Arc::downgrade(&bus.shared);
            log.on_overflow(move |lost, first_seq, last_seq| {
                if let Some(shared) = weak.upgrade() {
                    shared.publish(Event::new(
                        "plugbus.log.overflow",
                        serde_json::json!({ "lost": lost, "first_seq": first_seq, "last_seq": last_seq }),
                    ));
                }
            });
        }
        // Watch before the first scan, so nothing changed during it is missed
        // (a change to a file the scan loaded is then simply "unchanged").
        if self.watch {
            let dir = self
                .plugin_dir
                .clone()
                .ok_or_else(|| Error::Watch("watch(true) needs a plugin_dir".into()))?;
            let handle = crate::bus::watch::start(
                Arc::downgrade(&bus.shared),
                dir.clone(),
                self.exact_versions,
                &bus.shared.runtime,
            )
            .map_err(|e| Error::Watch(format!("{}: {e}", dir.display())))?;
            bus.shared.set_watcher(Box::new(move || Box::pin(handle.stop())));
        }
        Ok((bus, files))
    }
}

/// Loads `files`, as many at once as there are cores, the largest first:
/// compiling is CPU-bound and one plugin's compile (seconds for an
/// interpreted one) should not wait behind another's. Installation itself
/// is serialised by the bus; failures are listed in name order, whatever
/// order the loads finished in.
async fn load_all(bus: &Bus, mut files: Vec<PathBuf>) {
    let parallel = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    // Largest first (longest job first): compile time grows with size, and
    // the longest compile started last would finish last, alone, with the
    // other cores idle. Ties and unreadable sizes keep name order.
    let size = |f: &PathBuf| std::fs::metadata(f).map_or(0, |m| m.len());
    files.sort_by_cached_key(|f| std::cmp::Reverse(size(f)));
    let mut pending = files.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut failures = Vec::new();
    loop {
        while running.len() < parallel {
            let Some(file) = pending.next() else { break };
            let bus = bus.clone();
            // `reload_plugin`, not `load_plugin`: the watcher may already have
            // loaded this file, in which case it is simply unchanged.
            running.spawn(async move {
                let result = bus.reload_plugin(&file).await;
                (file, result)
            });
        }
        let Some(done) = running.join_next().await else { break };
        match done {
            Ok((file, Ok(_))) => bus.shared.startup.loaded(&file, true),
            Ok((file, Err(e))) => {
                bus.shared.startup.loaded(&file, false);
                tracing::error!(file = %crate::text::printable_path(&file), error = %e.kind, "plugin not loaded");
                failures.push(LoadFailure {
                    path: file,
                    reason: e.kind.to_string(),
                });
            }
            // A load that panicked: a bug, logged; the others go on.
            Err(e) => tracing::error!(error = %e, "a plugin load task failed"),
        }
    }
    failures.sort_by(|a, b| a.path.cmp(&b.path));
    lock(&bus.shared.load_failures).extend(failures);
    bus.shared.startup.finish();
}

/// The `*.wasm` entries of `dir`, sorted by name: every one, so that one
/// that is not a plugin file (a directory, a FIFO, a dangling link) fails
/// its load naming itself, in `load_failures`, instead of being skipped
/// without a word.
///
/// A manifest (`NAME.toml`) with no `NAME.wasm` beside it is logged as a
/// warning: a plugin's name is its file's, so a manifest beside a
/// differently spelt file (`my-plugin.toml` by `my_plugin.wasm`) applies to
/// nothing, and its grants, limits and secrets would silently be missing.
pub(crate) fn wasm_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut manifests = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match path.extension() {
            Some(e) if e == "wasm" => files.push(path),
            Some(e) if e == "toml" => manifests.push(path),
            _ => {}
        }
    }
    files.sort();
    manifests.sort();
    for manifest in manifests {
        // `files` is sorted: one lookup each, however many plugins.
        if files.binary_search(&manifest.with_extension("wasm")).is_err() {
            tracing::warn!(
                manifest = %crate::text::printable_path(&manifest),
                "a manifest with no plugin of its name beside it (a plugin's name is its .wasm file's): it applies to nothing"
            );
        }
    }
    Ok(files)
}
