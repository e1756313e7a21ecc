//! Loading a plugin: reading and validating the `.wasm` and its manifest,
//! compiling, linking (`InstancePre`), and building instances with the
//! plugin's limits applied.
//!
//! A [`PluginSpec`] is everything needed to (re)build the plugin's instance;
//! it is immutable and shared. An [`Instance`] (store + bindings) belongs to
//! the plugin's worker alone.

pub(crate) mod bindings;
pub(crate) mod catch_up;
pub(crate) mod ctx;
pub(crate) mod determinism;
pub(crate) mod engine;
pub(crate) mod granted_dirs;
pub(crate) mod port;
pub(crate) mod producers;
pub(crate) mod recovery;
pub(crate) mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use serde::Serialize;
use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, Func, InstancePre};

use crate::cache::content_hash;
use crate::event::{Event, WireEvent};
use crate::http::send::{HttpSetup, Outbound};
use crate::limits::Limits;
use crate::manifest::{Manifest, ManifestError, PinnedDir};
use crate::outcome::{Failure, backtrace_frames, classify};
use crate::pattern::{Pattern, PatternError};
use crate::plugin::bindings::{
    BATCH_EXPORT, HANDLER_EXPORT, Observer, ObserverIndices, QUERY_EXPORT, QueryExport, QueryIndices, STATE_EXPORT,
    StateExport, StateIndices,
};
use crate::plugin::ctx::{Mark, PluginCtx, Voice};
use crate::plugin::engine::{EPOCH_TICK, PluginEngine};
use crate::plugin::port::BusPort;
use crate::plugin::port::Captured;
use crate::signature::{SignatureError, SignaturePolicy, Signer};
use crate::stats::PluginStats;

/// A plugin that could not be loaded. Names the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct LoadError {
    /// The `.wasm` (or manifest) at fault.
    pub path: PathBuf,
    /// What is wrong.
    pub kind: LoadErrorKind,
}

/// Why a plugin was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadErrorKind {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file is empty or lacks the `\0asm` magic number.
    #[error("not a WebAssembly file (no `\\0asm` header)")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "a core WebAssembly module, not a component: build it for wasm32-wasip2 \
         (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component failed to parse, validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// A valid component, but not of the `plugbus:observer/observer@0.1.x` world.
    #[error("not a plugbus observer: {0}")]
    WrongWorld(String),
    /// The manifest beside the plugin is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The file name cannot be a plugin name.
    #[error("`{}` is not a valid plugin name (1 to 64 letters, digits, `-`, `_` and `.`, not starting with `.`)", crate::text::printable(.0))]
    BadName(String),
    /// The file name is a name the host keeps for itself.
    #[error(
        "`{0}` is reserved: it is the source of the events the host and the application publish, \
         so a plugin of that name could pass its follow-ups off as theirs; rename the file"
    )]
    ReservedName(String),
    /// The plugin's own `subscriptions()` answer is invalid.
    #[error("invalid subscription: {0}")]
    Subscription(#[from] PatternError),
    /// The plugin asked for more subscriptions than the host keeps.
    #[error("{0} subscriptions is more than the limit of {MAX_SUBSCRIPTIONS}")]
    TooManySubscriptions(usize),
    /// The plugin failed while starting (instantiating or answering `subscriptions()`).
    #[error("failed to start: {0}")]
    Start(Failure),
    /// A plugin with this name is already loaded.
    #[error("a plugin named `{0}` is already loaded")]
    AlreadyLoaded(String),
    /// The bus is shut down.
    #[error("the bus is shut down")]
    Closed,
    /// Its signature is missing (when required), unknown, or does not verify.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Its manifest asks for more than the capability policy allows.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyViolation),
}

/// Lifecycle state of a loaded plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// Running with a live instance.
    Ready,
    /// Its last event failed hard; a fresh instance is built before the next.
    Recovering,
    /// Failed on too many consecutive events: receives nothing until its
    /// backoff passes, then the next event is a probe.
    Quarantined,
    /// Unloaded, or the bus shut down.
    Unloaded,
}

/// A snapshot of one plugin, from [`Bus::plugins`](crate::Bus::plugins).
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// The plugin's name (its file name without `.wasm`).
    pub name: String,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// sha256 of the loaded `.wasm`, in hex.
    pub version: String,
    /// The language it was written in, when its toolchain recorded it
    /// (`Rust`, `C`, `Python`, `JavaScript`).
    pub language: Option<&'static str>,
    /// The size of its `.wasm` file in bytes.
    pub size: u64,
    /// Why the last hot reload failed, if it did (this version keeps running).
    pub reload_error: Option<String>,
    /// The patterns it is subscribed to.
    pub subscriptions: Vec<String>,
    /// Whether it exports `query` (a read model that
    /// [`Bus::query`](crate::Bus::query) can ask).
    pub queryable: bool,
    /// Its state.
    pub state: PluginState,
    /// While quarantined: milliseconds until the next event may run as a
    /// probe (0 once it is due).
    pub quarantine_retry_in_ms: Option<u64>,
    /// Events waiting in its queue.
    pub queue_depth: usize,
    /// Its queue's capacity (the `queue_capacity` limit).
    pub queue_capacity: usize,
    /// Its memory cap in bytes (the `memory_mib` limit), to compare with
    /// `stats.memory_bytes`.
    pub memory_limit_bytes: usize,
    /// Who signed it, when trusted keys are configured and it is signed
    /// (see [`crate::signature`]).
    pub signer: Option<Signer>,
    /// Its counters.
    pub stats: PluginStats,
    /// The origins its `[http]` grant allows (empty: no requests).
    pub http_allow: Vec<String>,
    /// Its outbound requests since this version loaded, when it has an
    /// `[http]` grant.
    pub http: Option<crate::http::HttpCounts>,
    /// The keys of its `[secrets]` (never their values).
    pub secrets: Vec<String>,
}

/// What `plugbus check` reports about a plugin file.
#[derive(Debug, Clone, Serialize)]
pub struct PluginCheck {
    /// The plugin's name.
    pub name: String,
    /// The world it implements.
    pub world: String,
    /// Its subscriptions (after any manifest override).
    pub subscriptions: Vec<String>,
    /// The interfaces it imports.
    pub imports: Vec<String>,
    /// The size of the `.wasm` file in bytes.
    pub size: u64,
    /// sha256 of the `.wasm`, in hex.
    pub version: String,
    /// The language it was written in, when its toolchain recorded it.
    pub language: Option<&'static str>,
    /// Who signed it, when trusted keys are configured and it is signed.
    pub signer: Option<Signer>,
    /// The origins its manifest's `[http]` grant allows.
    pub http_allow: Vec<String>,
    /// The keys of its `[secrets]` (never their values).
    pub secrets: Vec<String>,
}

/// Everything needed to build instances of one plugin.
pub(crate) struct PluginSpec {
    pub name: Arc<str>,
    pub path: PathBuf,
    pub pre: InstancePre<PluginCtx>,
    /// The `handler` export; `None` for a `batch-only-observer` plugin,
    /// whose every delivery is an `on-events` call.
    indices: Option<ObserverIndices>,
    /// The optional `state` export, when the plugin has one.
    state: Option<StateIndices>,
    /// The optional `query` export, when the plugin has one.
    query: Option<QueryIndices>,
    /// `batch-handler.on-events`, when the plugin exports it.
    batch: Option<ComponentExportIndex>,
    /// `handler.on-event`, when the plugin exports `handler`.
    on_event: Option<ComponentExportIndex>,
    pub limits: Limits,
    pub config: Arc<BTreeMap<String, String>>,
    /// `[secrets]`, served by `host.config` after `[config]`.
    secrets: Arc<BTreeMap<String, crate::manifest::Secret>>,
    /// Its outbound requests: grant, journal, counters, limits.
    pub outbound: Arc<Outbound>,
    pub manifest: Manifest,
    /// The manifest's directory grants, pinned once the plugin passed its
    /// checks: each instance gets them only while they are still the same
    /// directories.
    pub dirs: Vec<PinnedDir>,
    pub imports: Vec<String>,
    pub size: u64,
    /// sha256 of the `.wasm`, in hex.
    pub version: String,
    /// From the component's producers sections.
    pub language: Option<&'static str>,
    /// sha256 of the manifest, when there is one: a change reloads the plugin.
    pub manifest_version: Option<String>,
    /// Who signed it (verified before it was compiled).
    pub signer: Option<Signer>,
    pub bus: Weak<dyn BusPort>,
    /// Keeps the engine's epoch ticker running while any worker of this
    /// plugin is still draining, even after the bus itself is dropped.
    _engine: Arc<PluginEngine>,
}

/// A live instance: the plugin's store and its bindings.
pub(crate) struct Instance {
    pub store: Store<PluginCtx>,
    /// `None` for a `batch-only-observer` plugin.
    bindings: Option<Observer>,
    state: Option<StateExport>,
    query: Option<QueryExport>,
    /// `on-events`, type-checked when the instance was built.
    batch: Option<Func>,
    /// `on-event`, type-checked when the instance was built; called with
    /// the event's fields borrowed (see [`WireEvent`]).
    on_event: Option<Func>,
}

/// The params and results of `on-events`: the events are lowered from the
/// host's records in place (borrowed fields), never copied first.
type OnEventsParams<'a> = (&'a [WireEvent<'a>],);
type OnEventsResults = (Vec<Result<(), String>>,);
/// The params and results of `on-event`, lowered the same way.
type OnEventParams<'a> = (WireEvent<'a>,);
type OnEventResults = (Result<(), String>,);

/// The index of function `func` of the exported interface `export` (named
/// `what` in errors), when the plugin exports that interface.
fn export_func(
    component: &Component,
    export: &str,
    what: &str,
    func: &str,
) -> Result<Option<ComponentExportIndex>, LoadErrorKind> {
    let Some(iface) = component.get_export_index(None, export) else {
        return Ok(None);
    };
    match component.get_export_index(Some(&iface), func) {
        Some(index) => Ok(Some(index)),
        None => Err(LoadErrorKind::WrongWorld(format!(
            "its `{what}` export has no `{func}` function"
        ))),
    }
}

/// The function at `index` of `instance`, checked to have the parameters
/// `P` and results `R` (`what` names it in errors).
fn typed_func<P, R>(
    instance: &wasmtime::component::Instance,
    store: &mut Store<PluginCtx>,
    index: &ComponentExportIndex,
    what: &str,
) -> Result<Func, CallError>
where
    P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower,
    R: wasmtime::component::ComponentNamedList + wasmtime::component::Lift,
{
    let func = instance
        .get_func(&mut *store, index)
        .ok_or_else(|| CallError::from(Failure::Host(format!("its `{what}` export is missing"))))?;
    func.typed::<P, R>(&*store)
        .map_err(|e| Failure::Host(format!("its `{what}` export: {e:#}")))?;
    Ok(func)
}

/// What one `on-events` call gave back.
pub(crate) struct BatchRun {
    /// One answer per event, or the failure of the whole call (a trap, or
    /// an answer that breaks the batch contract).
    pub result: Result<Vec<Result<(), String>>, CallError>,
    /// Per event the plugin finished, in order: fuel burned, time taken
    /// (after a failure, the events before the one it failed on).
    pub marks: Vec<Mark>,
    /// After a failure inside an event the plugin had begun: which one, and
    /// what it cost until then.
    pub failed_in: Option<(usize, Mark)>,
    /// The follow-ups it emitted, in order: to publish if it succeeded.
    pub held: Vec<Captured>,
}

/// A failed call: what kind, plus the wasm backtrace when there is one.
pub(crate) struct CallError {
    pub failure: Failure,
    pub frames: Vec<String>,
}

impl From<Failure> for CallError {
    fn from(failure: Failure) -> Self {
        CallError {
            failure,
            frames: Vec::new(),
        }
    }
}

/// Most bytes a `.wasm` may have: far above the largest interpreted plugin
/// (~20 MB) while bounding what a stray file costs to read (or a registry
/// costs to download: [`crate::oci`] uses it as its default cap).
pub const MAX_WASM_BYTES: u64 = 256 << 20;

/// [`crate::files::read_regular`] off the async runtime: a regular file of
/// at most `max` bytes (a FIFO or a device in its place is refused, never
/// waited on).
async fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || crate::files::read_regular(&path, max))
        .await
        .map_err(std::io::Error::other)?
}

impl PluginSpec {
    /// Reads, validates, compiles and links the plugin at `path`.
    /// Compilation runs on a blocking thread, off the async runtime.
    pub async fn load(
        engine: &Arc<PluginEngine>,
        path: &Path,
        bus_limits: &Limits,
        (signatures, policy): (&Arc<SignaturePolicy>, Option<&crate::policy::Policy>),
        http: &HttpSetup,
        bus: Weak<dyn BusPort>,
    ) -> Result<PluginSpec, LoadError> {
        let err = |kind: LoadErrorKind| LoadError {
            path: path.to_owned(),
            kind,
        };
        let name: Arc<str> = plugin_name(path).map_err(err)?.into();
        let manifest_path = path.with_extension("toml");
        // Read once: the same bytes are hashed (a change reloads the plugin) and
        // parsed. A `.toml` given as the plugin is not its own manifest: the
        // header check below says what it is.
        let manifest_bytes = if manifest_path == path {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        } else {
            read_regular(&manifest_path, crate::manifest::MAX_MANIFEST_BYTES).await
        };
        let (manifest, manifest_version) = match manifest_bytes {
            Ok(bytes) => {
                let manifest_err = |reason: String| ManifestError {
                    path: manifest_path.clone(),
                    reason,
                };
                let text =
                    std::str::from_utf8(&bytes).map_err(|e| err(manifest_err(format!("not UTF-8: {e}")).into()))?;
                (
                    Manifest::parse(&manifest_path, text).map_err(|e| err(e.into()))?,
                    Some(content_hash(&bytes)),
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Manifest::default(), None),
            Err(e) => {
                return Err(err(LoadErrorKind::Manifest(ManifestError {
                    path: manifest_path,
                    reason: format!("cannot read: {e}"),
                })));
            }
        };
        let bytes = read_regular(path, MAX_WASM_BYTES).await.map_err(|e| {
            err(match e.kind() {
                std::io::ErrorKind::FileTooLarge => LoadErrorKind::Invalid(e.to_string()),
                _ => e.into(),
            })
        })?;
        let size = bytes.len() as u64;
        check_header(&bytes).map_err(err)?;
        // Before anything runs or is compiled: a refused file costs a hash
        // (of up to `MAX_WASM_BYTES`, and a read of the signature file: off
        // the async runtime).
        let (bytes, signer) = {
            let (signatures, file) = (signatures.clone(), path.to_owned());
            tokio::task::spawn_blocking(move || {
                let signer = signatures.check(&file, &bytes);
                (bytes, signer)
            })
            .await
            .map_err(|e| err(LoadErrorKind::Invalid(format!("signature check task failed: {e}"))))?
        };
        let signer = signer.map_err(|e| err(e.into()))?;
        if let Some(policy) = policy {
            policy
                .check(&name, signer.as_ref(), &manifest, bus_limits)
                .map_err(|e| err(e.into()))?;
        }

        // Hashing and compiling are CPU-bound: keep them off the async runtime.
        let eng = engine.clone();
        let plugin = name.clone();
        let (component, version, language) = tokio::task::spawn_blocking(move || {
            // A test can slow a load down (`sleep(ms)`) or fail it here.
            crate::failpoint::hit("plugin.compile").map_err(|e| wasmtime::Error::msg(e.to_string()))?;
            let version = content_hash(&bytes);
            let language = producers::language(&bytes);
            let _span = tracing::info_span!("compile", plugin = %plugin, bytes = bytes.len()).entered();
            let component = match &eng.cache {
                Some(cache) => cache.load_or_compile(&eng.engine, &bytes, &version, &plugin),
                None => Component::from_binary(&eng.engine, &bytes),
            };
            component.map(|c| (c, version, language))
        })
        .await
        .map_err(|e| err(LoadErrorKind::Invalid(format!("compiler task failed: {e}"))))?
        .map_err(|e| err(LoadErrorKind::Invalid(format!("{e:#}"))))?;

        let ty = component.component_type();
        let imports: Vec<String> = ty.imports(&engine.engine).map(|(n, _)| n.to_owned()).collect();
        // `get_export_index` matches the semver track: a 0.1.0 plugin's
        // `handler@0.1.0` answers to the host's `handler@0.1.3`.
        let on_event = export_func(&component, HANDLER_EXPORT, "handler", "on-event").map_err(err)?;
        let batch = export_func(&component, BATCH_EXPORT, "batch-handler", "on-events").map_err(err)?;
        let has_handler = on_event.is_some();
        let batch_only = !has_handler && batch.is_some();
        if batch_only && manifest.subscriptions.is_none() {
            return Err(err(LoadErrorKind::WrongWorld(format!(
                "it exports only `{BATCH_EXPORT}` (world batch-only-observer), which has no `subscriptions()`: \
                 list them in its manifest (`subscriptions = [\"...\"]` in {}.toml)",
                name
            ))));
        }
        if !has_handler && !batch_only {
            let exports: Vec<&str> = ty.exports(&engine.engine).map(|(n, _)| n).collect();
            return Err(err(LoadErrorKind::WrongWorld(format!(
                "it does not export `{HANDLER_EXPORT}` (it exports: {})",
                if exports.is_empty() {
                    "nothing".to_owned()
                } else {
                    exports.join(", ")
                }
            ))));
        }
        let instance_pre = engine.linker.instantiate_pre(&component).map_err(|e| {
            err(LoadErrorKind::WrongWorld(format!(
                "it imports something plugbus does not provide ({e:#}); its imports: {}",
                imports.join(", ")
            )))
        })?;
        let indices = if has_handler {
            Some(ObserverIndices::new(&instance_pre).map_err(|e| err(LoadErrorKind::WrongWorld(format!("{e:#}"))))?)
        } else {
            None
        };
        let state = match component.get_export_index(None, STATE_EXPORT) {
            None => None,
            Some(_) => Some(
                StateIndices::new(&instance_pre)
                    .map_err(|e| err(LoadErrorKind::WrongWorld(format!("its `state` export: {e:#}"))))?,
            ),
        };
        let query = match component.get_export_index(None, QUERY_EXPORT) {
            None => None,
            Some(_) => Some(
                QueryIndices::new(&instance_pre)
                    .map_err(|e| err(LoadErrorKind::WrongWorld(format!("its `query` export: {e:#}"))))?,
            ),
        };
        // Only now, with the signature and the policy passed and the
        // component valid: create the writable directories granted, and
        // pin every grant to the directory the policy saw.
        let dirs = manifest.pin_dirs().map_err(|reason| {
            err(LoadErrorKind::Manifest(ManifestError {
                path: manifest_path.clone(),
                reason,
            }))
        })?;
        let limits = manifest.apply_limits(bus_limits);
        let plugin_name_for_http = name.clone();
        Ok(PluginSpec {
            name,
            path: path.to_owned(),
            pre: instance_pre,
            indices,
            state,
            query,
            batch,
            on_event,
            limits,
            config: Arc::new(manifest.config.clone()),
            secrets: Arc::new(manifest.secrets.clone()),
            outbound: Arc::new(Outbound::new(
                plugin_name_for_http,
                manifest.http.clone().unwrap_or_default(),
                http,
                announce(bus.clone()),
            )),
            manifest,
            dirs,
            imports,
            size,
            version,
            language,
            manifest_version,
            signer,
            bus,
            _engine: engine.clone(),
        })
    }

    /// Builds a fresh instance with this plugin's limits.
    pub async fn instantiate(&self) -> Result<Instance, CallError> {
        let ctx = PluginCtx::new(
            self.name.clone(),
            &self.limits,
            (self.config.clone(), self.secrets.clone()),
            &self.dirs,
            self.outbound.clone(),
            self.bus.clone(),
        )
        .map_err(|e| Failure::Host(format!("cannot grant directories: {e:#}")))?;
        let mut store = Store::new(self.pre.engine(), ctx);
        store.limiter(|ctx| &mut ctx.limiter);
        if self.outbound.grant.is_empty() {
            store.epoch_deadline_trap();
        } else {
            // Time waited on requests extends the event's deadline, up to
            // the grant's I/O budget; past that, the same trap as always.
            store.epoch_deadline_callback(|ctx| match ctx.data().io_extension() {
                Some(ticks) => Ok(wasmtime::UpdateDeadline::Continue(ticks)),
                None => Err(wasmtime::Trap::Interrupt.into()),
            });
        }
        self.arm(&mut store, None, Voice::Live);
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.call_error(&e, &store))?;
        let bindings = match &self.indices {
            Some(indices) => Some(
                indices
                    .load(&mut store, &instance)
                    .map_err(|e| self.call_error(&e, &store))?,
            ),
            None => None,
        };
        let state = match &self.state {
            Some(indices) => Some(
                indices
                    .load(&mut store, &instance)
                    .map_err(|e| self.call_error(&e, &store))?,
            ),
            None => None,
        };
        let query = match &self.query {
            Some(indices) => Some(
                indices
                    .load(&mut store, &instance)
                    .map_err(|e| self.call_error(&e, &store))?,
            ),
            None => None,
        };
        // Checked once here; each call re-types them with its own borrow's
        // lifetime.
        let batch = match &self.batch {
            Some(index) => Some(typed_func::<OnEventsParams<'static>, OnEventsResults>(
                &instance,
                &mut store,
                index,
                "batch-handler.on-events",
            )?),
            None => None,
        };
        let on_event = match &self.on_event {
            Some(index) => Some(typed_func::<OnEventParams<'static>, OnEventResults>(
                &instance,
                &mut store,
                index,
                "handler.on-event",
            )?),
            None => None,
        };
        Ok(Instance {
            store,
            bindings,
            state,
            query,
            batch,
            on_event,
        })
    }

    /// Most events one call may take: the `max_batch` limit for a plugin
    /// that exports `batch-handler`, 1 for any other.
    pub fn max_batch(&self) -> usize {
        if self.batch.is_some() {
            self.limits.max_batch.max(1)
        } else {
            1
        }
    }

    /// Whether the plugin exports `state` (snapshot and restore).
    pub fn has_state(&self) -> bool {
        self.state.is_some()
    }

    /// Whether the plugin exports `query` (a read model).
    pub fn has_query(&self) -> bool {
        self.query.is_some()
    }

    /// Runs `query` with the query budgets (`query_fuel`,
    /// `query_deadline`); emits are refused meanwhile. `Ok(Err(reason))`
    /// when the plugin refused it or has no `query` export.
    pub async fn query(&self, instance: &mut Instance, request: &str) -> Result<Result<String, String>, CallError> {
        let Some(query) = instance.query.clone() else {
            return Ok(Err("the plugin has no `query` export".into()));
        };
        let (fuel, deadline) = (self.limits.query_fuel, self.limits.query_deadline);
        self.arm_with(&mut instance.store, None, Voice::Live, fuel, deadline);
        instance.store.data_mut().begin_query();
        let call = query.call_query(&mut instance.store, request);
        let answer = tokio::time::timeout(Self::timeout(deadline), call).await;
        let result = self
            .settle(answer, &instance.store)
            .map(|a| a.map_err(crate::text::cap));
        instance.store.data_mut().querying = false;
        result
    }

    /// Asks the instance for a snapshot of its state, under the state
    /// budgets (`state_fuel`, `state_deadline`). `Ok(None)` when the
    /// plugin has no `state` export; `Ok(Some(Err(reason)))` when it declined
    /// or its snapshot is over [`MAX_SNAPSHOT_BYTES`].
    pub async fn snapshot(&self, instance: &mut Instance) -> Result<Option<Result<Vec<u8>, String>>, CallError> {
        let Some(state) = instance.state.clone() else {
            return Ok(None);
        };
        let (fuel, deadline) = (self.limits.state_fuel, self.limits.state_deadline);
        self.arm_with(&mut instance.store, None, Voice::Silent, fuel, deadline);
        // Silent (nothing to publish), yet taken once: what it writes to a
        // granted directory (a buffer flushed, say) is written.
        instance.store.data_mut().open_writes();
        let call = state.call_snapshot(&mut instance.store);
        let answer = tokio::time::timeout(Self::timeout(deadline), call).await;
        Ok(Some(match self.settle(answer, &instance.store)? {
            Ok(bytes) if bytes.len() > MAX_SNAPSHOT_BYTES => Err(format!(
                "a {}-byte snapshot is over the {MAX_SNAPSHOT_BYTES}-byte limit",
                bytes.len()
            )),
            Ok(bytes) => Ok(bytes),
            Err(reason) => Err(crate::text::cap(reason)),
        }))
    }

    /// Hands a snapshot to a fresh instance, under the state budgets.
    /// `Ok(Err(reason))` when the
    /// plugin refused it.
    pub async fn restore(&self, instance: &mut Instance, bytes: &[u8]) -> Result<Result<(), String>, CallError> {
        let Some(state) = instance.state.clone() else {
            return Ok(Err("the plugin has no `state` export".into()));
        };
        let (fuel, deadline) = (self.limits.state_fuel, self.limits.state_deadline);
        self.arm_with(&mut instance.store, None, Voice::Silent, fuel, deadline);
        let call = state.call_restore(&mut instance.store, bytes);
        let answer = tokio::time::timeout(Self::timeout(deadline), call).await;
        Ok(self.settle(answer, &instance.store)?.map_err(crate::text::cap))
    }

    /// The plugin's subscriptions: the manifest's, or the instance's answer.
    pub async fn subscriptions(&self, instance: &mut Instance) -> Result<Vec<Pattern>, LoadErrorKind> {
        if let Some(subs) = &self.manifest.subscriptions {
            return Ok(subs.clone());
        }
        // A batch-only plugin without them in its manifest is refused at load.
        let Some(bindings) = &instance.bindings else {
            return Ok(Vec::new());
        };
        self.arm(&mut instance.store, None, Voice::Live);
        let call = bindings
            .plugbus_observer_handler()
            .call_subscriptions(&mut instance.store);
        let answer = tokio::time::timeout(Self::timeout(self.limits.deadline), call).await;
        let raw = self
            .settle(answer, &instance.store)
            .map_err(|e| LoadErrorKind::Start(e.failure))?;
        if raw.len() > MAX_SUBSCRIPTIONS {
            return Err(LoadErrorKind::TooManySubscriptions(raw.len()));
        }
        Ok(raw.iter().map(|s| Pattern::parse(s)).collect::<Result<Vec<_>, _>>()?)
    }

    /// Runs `on-event` with fresh budgets. Returns the guest's answer and the
    /// fuel burned, or the failure. `voice` says what the plugin's emits and
    /// logs become (silenced while the event is replayed to rebuild state).
    pub async fn on_event(
        &self,
        instance: &mut Instance,
        event: &Event,
        voice: Voice,
    ) -> (Result<Result<(), String>, CallError>, u64) {
        let Some(func) = instance.on_event else {
            return self.on_event_as_batch(instance, event, voice).await;
        };
        self.arm(&mut instance.store, Some(event.clone()), voice);
        let answer = tokio::time::timeout(self.event_timeout(), async {
            let typed = func.typed::<OnEventParams<'_>, OnEventResults>(&instance.store)?;
            let (result,) = typed.call_async(&mut instance.store, (event.wire(),)).await?;
            Ok(result)
        })
        .await;
        // The guest's error text is capped before anything keeps or logs it.
        let result = self
            .settle(answer, &instance.store)
            .map(|answer| answer.map_err(crate::text::cap));
        let fuel = self.limits.fuel.saturating_sub(instance.store.get_fuel().unwrap_or(0));
        instance.store.data_mut().current = None;
        // As a batch's: published once the call has succeeded (an `Err` the
        // guest returned included), dropped when it failed.
        let held = std::mem::take(&mut instance.store.data_mut().held);
        if result.is_ok() {
            self.publish_held(held, voice);
        }
        let dropped = instance.store.data().logs.dropped();
        // Unless live, every line is dropped on purpose.
        if dropped > 0 && voice == Voice::Live {
            tracing::warn!(
                plugin = &*self.name,
                event = event.name(),
                dropped,
                "log lines over the per-event budget were dropped"
            );
        }
        (result, fuel)
    }

    /// [`on_event`](Self::on_event) for a `batch-only-observer` plugin: a
    /// batch of one, whose follow-ups are published when it succeeds (as
    /// `on-event`'s are, unless the voice is silent).
    async fn on_event_as_batch(
        &self,
        instance: &mut Instance,
        event: &Event,
        voice: Voice,
    ) -> (Result<Result<(), String>, CallError>, u64) {
        let run = self.on_events(instance, std::slice::from_ref(event), voice).await;
        match run.result {
            Ok(mut answers) => {
                self.publish_held(run.held, voice);
                let fuel = run.marks.first().map_or(0, |m| m.fuel);
                // One answer per event was checked by `on_events`.
                (Ok(answers.pop().unwrap_or(Ok(()))), fuel)
            }
            Err(e) => (Err(e), run.failed_in.map_or(0, |(_, mark)| mark.fuel)),
        }
    }

    /// Publishes the follow-ups a successful call held, unless
    /// `voice` is silent (a replay: they were published when it ran live).
    pub fn publish_held(&self, held: Vec<Captured>, voice: Voice) {
        if voice == Voice::Silent {
            return;
        }
        let Some(bus) = self.bus.upgrade() else { return };
        for follow_up in held {
            if let Err(reason) = bus.follow_up(follow_up) {
                tracing::debug!(plugin = &*self.name, %reason, "follow-up not accepted");
            }
        }
    }

    /// Runs `on-events` over `events` (a plugin with `batch-handler`). Each
    /// event gets the budgets of a call of its own as the guest begins it
    /// (see `ctx::begin_event`), the host's timer included: it bounds each
    /// event from its own start, so one event blocked in a host call (a
    /// WASI sleep, a read) fails when its own deadline has passed, not after
    /// the whole batch's. Follow-ups are held, not published: the caller publishes
    /// `held` when the whole call succeeded. `voice` as for
    /// [`on_event`](Self::on_event).
    pub async fn on_events(&self, instance: &mut Instance, events: &[Event], voice: Voice) -> BatchRun {
        let Some(func) = instance.batch else {
            return BatchRun {
                result: Err(Failure::Host("the plugin has no `batch-handler` export".into()).into()),
                marks: Vec::new(),
                failed_in: None,
                held: Vec::new(),
            };
        };
        let ticks = Self::ticks(self.limits.deadline);
        self.arm(&mut instance.store, None, voice);
        instance
            .store
            .data_mut()
            .begin_batch(events.to_vec(), &self.limits, ticks, voice);
        let wires: Vec<WireEvent<'_>> = events.iter().map(Event::wire).collect();
        let clock = instance.store.data().event_clock.clone();
        let answer = each_event_bounded(&clock, self.event_timeout(), async {
            let typed = func.typed::<OnEventsParams<'_>, OnEventsResults>(&instance.store)?;
            let (results,) = typed.call_async(&mut instance.store, (&wires[..],)).await?;
            Ok(results)
        })
        .await;
        let fuel_left = instance.store.get_fuel().unwrap_or(0);
        let ctx = instance.store.data_mut();
        let mut batch = ctx.batch.take();
        let mut failed_in = None;
        if let Some(batch) = batch.as_mut() {
            // After a failure `marks` holds only the events that finished.
            if matches!(answer, Ok(Ok(_))) {
                batch.finish(fuel_left);
            } else {
                failed_in = batch.failed_in(fuel_left);
            }
            ctx.report_dropped_logs();
        }
        ctx.current = None;
        let mut result = self.settle(answer, &instance.store).map(|answers| {
            answers
                .into_iter()
                .map(|a| a.map_err(crate::text::cap))
                .collect::<Vec<_>>()
        });
        let held = std::mem::take(&mut instance.store.data_mut().held);
        let (marks, all_begun) = match batch {
            Some(b) => {
                let all = b.all_begun();
                (b.marks, all)
            }
            None => (Vec::new(), false),
        };
        // The batch contract: one answer per event, every event begun.
        if let Ok(answers) = &result {
            let broken = if answers.len() != events.len() {
                Some(format!(
                    "`on-events` answered {} results for {} events",
                    answers.len(),
                    events.len()
                ))
            } else if !all_begun {
                Some(format!(
                    "`on-events` returned without calling `batch-host.begin-event` for each of its {} events",
                    events.len()
                ))
            } else {
                None
            };
            if let Some(reason) = broken {
                result = Err(Failure::Host(reason).into());
            }
        }
        BatchRun {
            result,
            marks,
            failed_in,
            held,
        }
    }

    /// The epoch ticks of a `deadline`.
    fn ticks(deadline: std::time::Duration) -> u64 {
        (deadline.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
    }

    /// Refills fuel, arms the epoch deadline and resets per-event budgets.
    fn arm(&self, store: &mut Store<PluginCtx>, event: Option<Event>, voice: Voice) {
        self.arm_with(store, event, voice, self.limits.fuel, self.limits.deadline);
    }

    /// [`arm`](Self::arm) with a given fuel and deadline (a query's).
    fn arm_with(
        &self,
        store: &mut Store<PluginCtx>,
        event: Option<Event>,
        voice: Voice,
        fuel: u64,
        deadline: std::time::Duration,
    ) {
        // `set_fuel` only fails when fuel is not enabled, which the engine
        // always enables; nothing to handle.
        let _ = store.set_fuel(fuel);
        store.set_epoch_deadline(Self::ticks(deadline));
        // Long computations yield to the async runtime every ~1 ms of fuel so
        // one plugin never holds a runtime thread for its whole deadline.
        let _ = store.fuel_async_yield_interval(Some(YIELD_FUEL));
        let limits = self.limits.clone();
        store.data_mut().begin(event, &limits, voice);
        let now = std::time::Instant::now();
        store.data_mut().deadline_at = now + deadline;
        store.data().event_clock.start(now);
    }

    /// The host-side bound on one call with this `deadline`: the deadline
    /// plus a little slack so the epoch trap, which keeps the backtrace,
    /// normally fires first; the timer catches a guest blocked inside a host
    /// call.
    fn timeout(deadline: std::time::Duration) -> std::time::Duration {
        deadline + EPOCH_TICK * 5
    }

    /// The host-side bound on the call of one event: its deadline, plus its
    /// I/O budget when the plugin may make requests.
    fn event_timeout(&self) -> std::time::Duration {
        let io = if self.outbound.grant.is_empty() {
            std::time::Duration::ZERO
        } else {
            self.outbound.grant.io_budget
        };
        Self::timeout(self.limits.deadline + io)
    }

    /// The result of a call bounded by [`timeout`](Self::timeout): its
    /// value, or its failure classified (a timer that fired: the deadline).
    fn settle<T>(
        &self,
        answer: Result<wasmtime::Result<T>, tokio::time::error::Elapsed>,
        store: &Store<PluginCtx>,
    ) -> Result<T, CallError> {
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.call_error(&e, store)),
            Err(_) => Err(CallError::from(Failure::Deadline)),
        }
    }

    fn call_error(&self, err: &wasmtime::Error, store: &Store<PluginCtx>) -> CallError {
        CallError {
            failure: classify(err, store.data().limiter.refused),
            frames: backtrace_frames(err),
        }
    }

    /// What `plugbus check` prints.
    pub fn check(&self, subscriptions: &[Pattern]) -> PluginCheck {
        PluginCheck {
            name: self.name.to_string(),
            world: format!(
                "plugbus:observer/{}@0.1.3{}",
                match (self.state.is_some(), self.query.is_some()) {
                    _ if self.indices.is_none() => "batch-only-observer",
                    (true, true) => "projection",
                    (true, false) => "stateful-observer",
                    (false, true) => "queryable-observer",
                    (false, false) => "observer",
                },
                if self.batch.is_some() && self.indices.is_some() {
                    " + batch-handler"
                } else {
                    ""
                }
            ),
            subscriptions: subscriptions.iter().map(|p| p.as_str().to_owned()).collect(),
            imports: self.imports.clone(),
            size: self.size,
            version: self.version.clone(),
            language: self.language,
            signer: self.signer.clone(),
            http_allow: self.outbound.grant.allow.iter().map(|o| o.text.clone()).collect(),
            secrets: self.manifest.secrets.keys().cloned().collect(),
        }
    }
}

/// Runs `call` (a batch's) bounded per event: it fails with the timer's
/// `Elapsed` once the event in progress (as `clock` says) has run `bound`
/// since it began. Epoch interruption stops guest code at its deadline, but
/// not a guest waiting in a host call; this timer does, event by event.
async fn each_event_bounded<F: std::future::Future>(
    clock: &ctx::EventClock,
    bound: std::time::Duration,
    call: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    let mut call = std::pin::pin!(call);
    loop {
        let until = clock.began() + bound;
        match tokio::time::timeout_at(until.into(), call.as_mut()).await {
            Ok(answer) => return Ok(answer),
            // The next event began meanwhile: it has a bound of its own.
            Err(_) if clock.began() + bound > std::time::Instant::now() => {}
            Err(elapsed) => return Err(elapsed),
        }
    }
}

/// Publishes `plugbus.*` events for the plugin's request hook (which does
/// not reach into `plugin`'s port itself).
fn announce(bus: Weak<dyn BusPort>) -> crate::http::send::Announce {
    Arc::new(move |event| {
        if let Some(bus) = bus.upgrade() {
            bus.publish(event);
        }
    })
}

/// Largest snapshot the host keeps, in bytes. A snapshot is held in memory
/// and written beside the log; 16 MiB is far above an observer's totals and
/// indexes while bounding what a plugin can make the host store.
pub const MAX_SNAPSHOT_BYTES: usize = 16 << 20;

/// Most patterns one plugin may subscribe to: far more than any observer
/// needs, while bounding the registry entries a guest can make the host keep.
pub const MAX_SUBSCRIPTIONS: usize = 256;

/// Fuel between two yields to the async runtime (~1 ms of work here).
const YIELD_FUEL: u64 = 2_000_000;

pub use crate::manifest::valid_plugin_name;

fn plugin_name(path: &Path) -> Result<String, LoadErrorKind> {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
    if stem == crate::event::HOST_SOURCE {
        return Err(LoadErrorKind::ReservedName(stem.to_owned()));
    }
    if valid_plugin_name(stem) {
        Ok(stem.to_owned())
    } else {
        // No name at all (`/`, `.wasm`): the path, so the message names something.
        let named = if stem.is_empty() {
            path.display().to_string()
        } else {
            stem.to_owned()
        };
        Err(LoadErrorKind::BadName(named))
    }
}

/// Distinguishes "not wasm" and "core module" from a component before handing
/// the bytes to the compiler, for a clearer message.
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), LoadErrorKind> {
    const MAGIC: &[u8; 4] = b"\0asm";
    match bytes {
        [m0, m1, m2, m3, rest @ ..] if [*m0, *m1, *m2, *m3] == *MAGIC => match rest {
            // version 1, layer 0: a core module
            [1, 0, 0, 0, ..] => Err(LoadErrorKind::CoreModule),
            _ => Ok(()),
        },
        _ => Err(LoadErrorKind::NotWasm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_classified() {
        assert!(matches!(check_header(b""), Err(LoadErrorKind::NotWasm)));
        assert!(matches!(check_header(b"hello world"), Err(LoadErrorKind::NotWasm)));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(LoadErrorKind::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn plugin_names_come_from_the_file() {
        assert_eq!(plugin_name(Path::new("/x/cost-tracker.wasm")).unwrap(), "cost-tracker");
        assert!(plugin_name(Path::new("/x/bad name.wasm")).is_err());
        assert!(plugin_name(Path::new("/x/.wasm")).is_err());
    }
}
