//! The native half of the `plugbus` Python package: a plugbus [`Bus`] on a
//! tokio runtime of its own, driven from Python.
//!
//! The Python half (`python/plugbus/__init__.py`) keeps agent-event-bus's
//! semantics for Python handlers (inline, in registration order, on the
//! caller's thread); this module publishes to the Wasm plugins and hands
//! their follow-up events back. Every call that waits (building the bus,
//! `flush`, `emit_and_wait`, `query`, the follow-up receive, `shutdown`)
//! releases the GIL first, so plugin work never holds it and no Python code
//! ever runs on a tokio thread.
//!
//! A tokio runtime does not survive `fork()`: every call checks that it runs
//! in the process that built the bus, and raises `PlugbusError` otherwise.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plugbus::{Bus, Event, Outcome};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _native,
    PlugbusError,
    PyException,
    "A bus that cannot be built or used: a bad plugin directory or log, a bus used after fork() or shutdown."
);
pyo3::create_exception!(
    _native,
    QueryError,
    PyException,
    "A query got no answer. args: (kind, message); kind is one of unknown_plugin, no_query_export, too_large, plugin_error, limit, failed, busy, shutting_down."
);

/// Worker threads of the bus's runtime: plugin workers are async tasks, and
/// two threads keep one slow plugin from delaying the others' wake-ups on a
/// small machine without competing with the agent's own threads.
const RUNTIME_THREADS: usize = 2;

/// What a live bus holds. Shared so a call in flight keeps it alive while
/// another thread shuts the bus down.
struct Inner {
    runtime: tokio::runtime::Runtime,
    bus: Bus,
    /// Follow-up and host events for Python handlers (see `forward`).
    follow_ups: Mutex<Receiver<Event>>,
    /// Events sent to `follow_ups` so far.
    forwarded: Arc<AtomicU64>,
    /// The process that built the runtime.
    pid: u32,
    /// Map OpenTelemetry spans handed over by `PlugbusSpanExporter`: one
    /// receiver per `all_spans` setting (index 0: GenAI spans only, 1: all
    /// spans), each made at its first export and shared by the exporters of
    /// that setting (it remembers traces' conversation ids).
    otlp: [std::sync::OnceLock<plugbus::otlp::Receiver>; 2],
}

/// A plugbus bus for Python. Not for direct use: see `plugbus.EventBus`.
#[pyclass(frozen, module = "plugbus._native")]
struct NativeBus {
    inner: Mutex<Option<Arc<Inner>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent
    // (they guard an Option and a Receiver): recover the value.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A follow-up as Python sees it: (name, payload JSON, id, time ns,
/// correlation id, source, seq).
type FollowUp = (String, String, String, u64, Option<String>, String, Option<u64>);

impl NativeBus {
    fn live(&self) -> PyResult<Arc<Inner>> {
        let inner = lock(&self.inner)
            .clone()
            .ok_or_else(|| PlugbusError::new_err("the bus is shut down"))?;
        if inner.pid != std::process::id() {
            return Err(PlugbusError::new_err(format!(
                "this bus was created in process {} and cannot be used after fork(): \
                 create a new EventBus in the child",
                inner.pid
            )));
        }
        Ok(inner)
    }
}

/// Limits from the manifest's `[limits]` keys, validated by the manifest parser.
fn limits(text: Option<&str>) -> PyResult<plugbus::Limits> {
    let Some(text) = text else {
        return Ok(plugbus::Limits::default());
    };
    let manifest = plugbus::manifest::Manifest::parse(std::path::Path::new("limits"), text)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(manifest.apply_limits(&plugbus::Limits::default()))
}

fn event(name: &str, value: serde_json::Value, correlation_id: Option<String>) -> Event {
    let event = Event::new(name, value);
    match correlation_id {
        Some(id) => event.with_correlation_id(id),
        None => event,
    }
}

thread_local! {
    /// The id of the event this thread is publishing for Python, while it
    /// does: the forwarder to Python handlers (run inline by the publish)
    /// skips it, as Python dispatched it already. A host announcement
    /// (`plugbus.*`) is forwarded, and so was a Python event of such a
    /// name, which its handlers then got twice.
    static FROM_PYTHON: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `publish` (of `event`, from Python) with [`FROM_PYTHON`] set.
fn publishing_from_python<T>(event: &Event, publish: impl FnOnce() -> T) -> T {
    FROM_PYTHON.with(|id| *id.borrow_mut() = Some(event.id().to_owned()));
    let out = publish();
    FROM_PYTHON.with(|id| *id.borrow_mut() = None);
    out
}

/// Whether `event` is the one this thread is publishing for Python.
fn from_python(event: &Event) -> bool {
    FROM_PYTHON.with(|id| id.borrow().as_deref() == Some(event.id()))
}

/// Deepest nesting converted: what every reader of the event log reads back
/// (`plugbus::event::MAX_PAYLOAD_DEPTH`); deeper data is "not
/// JSON-serialisable" and reaches Python handlers only.
const MAX_DEPTH: usize = plugbus::event::MAX_PAYLOAD_DEPTH;

/// `data` as JSON, converted directly (no JSON text in between), accepting
/// what `json.dumps` accepts: dicts (keys str, int, float, bool or None,
/// turned into strings), lists, tuples, str, int, float, bool and None.
/// `Err` names what cannot be converted: such data reaches Python handlers
/// only. Unlike `json.dumps`, NaN and infinities and integers beyond 64
/// bits are refused: they have no JSON form the plugins could read.
fn to_json(data: &Bound<'_, PyAny>, depth: usize) -> Result<serde_json::Value, String> {
    use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
    use serde_json::Value;
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    if data.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = data.cast::<PyString>() {
        return Ok(Value::String(s.to_str().map_err(|e| e.to_string())?.to_owned()));
    }
    if let Ok(b) = data.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(i) = data.cast::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            return Ok(Value::from(v));
        }
        return i
            .extract::<u64>()
            .map(Value::from)
            .map_err(|_| "an integer beyond 64 bits".to_owned());
    }
    if let Ok(f) = data.cast::<PyFloat>() {
        return serde_json::Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| format!("{} has no JSON form", f.value()));
    }
    if let Ok(d) = data.cast::<PyDict>() {
        let mut map = serde_json::Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = match to_json(&k, depth + 1)? {
                Value::String(s) => s,
                Value::Null => "null".to_owned(),
                k @ (Value::Bool(_) | Value::Number(_)) => k.to_string(),
                _ => return Err(format!("a {} key", k.get_type().name().map_err(|e| e.to_string())?)),
            };
            map.insert(key, to_json(&v, depth + 1)?);
        }
        return Ok(Value::Object(map));
    }
    let items = |items: &mut dyn Iterator<Item = Bound<'_, PyAny>>| {
        items
            .map(|v| to_json(&v, depth + 1))
            .collect::<Result<_, _>>()
            .map(Value::Array)
    };
    if let Ok(l) = data.cast::<PyList>() {
        return items(&mut l.iter());
    }
    if let Ok(t) = data.cast::<PyTuple>() {
        return items(&mut t.iter());
    }
    Err(format!(
        "a {} object",
        data.get_type().name().map_err(|e| e.to_string())?
    ))
}

/// [`to_json`] for the Python side: `ValueError` naming the cause.
fn data_json(data: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    to_json(data, 0).map_err(|why| PyValueError::new_err(format!("data is not JSON-serialisable: {why}")))
}

fn outcome_json(outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Ok => serde_json::json!({ "outcome": "ok" }),
        Outcome::Error(message) => serde_json::json!({ "outcome": "error", "message": message }),
        Outcome::Failed(failure) => {
            serde_json::json!({ "outcome": "failed", "kind": failure.kind(), "message": failure.to_string() })
        }
        Outcome::Dropped(reason) => serde_json::json!({ "outcome": "dropped", "reason": reason.to_string() }),
    }
}

#[pymethods]
impl NativeBus {
    /// Builds the bus: loads the plugins of `plugin_dir` (and watches it),
    /// opens the log in `log_dir`. `limits` is TOML with the manifest's
    /// `[limits]` keys. `trusted_keys`, `require_signed` and `policy`:
    /// signature-checked loading and the capability policy (docs/trust.md).
    /// `log_retention_bytes`, `log_retention_age_s` and `log_segment_bytes`:
    /// the log's retention (docs/durability.md).
    #[new]
    #[pyo3(signature = (plugin_dir=None, log_dir=None, watch=false, limits=None, cache_dir=None, no_cache=false, trusted_keys=None, require_signed=false, policy=None, log_retention_bytes=None, log_retention_age_s=None, log_segment_bytes=None))]
    #[allow(clippy::too_many_arguments)] // Python keywords, one per builder option.
    fn new(
        py: Python<'_>,
        plugin_dir: Option<PathBuf>,
        log_dir: Option<PathBuf>,
        watch: bool,
        limits: Option<&str>,
        cache_dir: Option<PathBuf>,
        no_cache: bool,
        trusted_keys: Option<PathBuf>,
        require_signed: bool,
        policy: Option<PathBuf>,
        log_retention_bytes: Option<u64>,
        log_retention_age_s: Option<f64>,
        log_segment_bytes: Option<u64>,
    ) -> PyResult<Self> {
        let limits = self::limits(limits)?;
        let retention_age = log_retention_age_s
            .map(|s| {
                Duration::try_from_secs_f64(s).map_err(|_| {
                    PyValueError::new_err(format!("log_retention_age_s: {s} is not a number of seconds >= 0"))
                })
            })
            .transpose()?;
        if let Some(bytes) = log_segment_bytes.filter(|b| *b < plugbus::log::MIN_SEGMENT_BYTES) {
            return Err(PyValueError::new_err(format!(
                "log_segment_bytes: a segment of {bytes} bytes is below the smallest, {}",
                plugbus::log::MIN_SEGMENT_BYTES
            )));
        }
        if let Some(dir) = &plugin_dir
            && !dir.is_dir()
        {
            return Err(PlugbusError::new_err(format!(
                "{}: the plugin directory does not exist",
                dir.display()
            )));
        }
        let inner = py.detach(move || -> Result<Inner, String> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(RUNTIME_THREADS)
                .thread_name("plugbus")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the bus's runtime: {e}"))?;
            let mut builder = Bus::builder().limits(limits).watch(watch);
            if let Some(dir) = plugin_dir {
                builder = builder.plugin_dir(dir);
            }
            if let Some(dir) = log_dir {
                builder = builder.log_dir(dir).retention(log_retention_bytes, retention_age);
                if let Some(bytes) = log_segment_bytes {
                    builder = builder.segment_bytes(bytes);
                }
            }
            if let Some(dir) = cache_dir {
                builder = builder.cache_dir(dir);
            }
            if no_cache {
                builder = builder.no_cache();
            }
            if let Some(keys) = trusted_keys {
                builder = builder.trusted_keys(keys);
            }
            builder = builder.require_signed(require_signed);
            if let Some(policy) = policy {
                builder = builder.policy(policy);
            }
            let bus = runtime.block_on(builder.build()).map_err(|e| e.to_string())?;
            let (tx, rx) = channel();
            let forwarded = Arc::new(AtomicU64::new(0));
            let count = forwarded.clone();
            let tx = Mutex::new(tx);
            // Plugins' follow-ups and the host's own announcements go to
            // Python handlers; events emitted from Python were dispatched
            // there already. Only a channel send runs here, on whichever
            // thread published the event.
            bus.on("**", move |e: &Event| {
                if (e.source() != "host" || e.name().starts_with("plugbus.")) && !from_python(e) {
                    count.fetch_add(1, Ordering::AcqRel);
                    let _ = lock(&tx).send(e.clone());
                }
            })
            .map_err(|e| e.to_string())?;
            Ok(Inner {
                runtime,
                bus,
                follow_ups: Mutex::new(rx),
                forwarded,
                pid: std::process::id(),
                otlp: [std::sync::OnceLock::new(), std::sync::OnceLock::new()],
            })
        });
        let inner = inner.map_err(PlugbusError::new_err)?;
        Ok(NativeBus {
            inner: Mutex::new(Some(Arc::new(inner))),
        })
    }

    /// Publishes an event to the plugins without waiting; `data` becomes
    /// its JSON payload. Returns its id, creation time (ns since the epoch)
    /// and sequence number. `ValueError` when `data` is not JSON-serialisable
    /// (nothing is published).
    #[pyo3(signature = (name, data, correlation_id=None))]
    fn publish(
        &self,
        name: &str,
        data: &Bound<'_, PyAny>,
        correlation_id: Option<String>,
    ) -> PyResult<(String, u64, Option<u64>)> {
        let inner = self.live()?;
        let event = event(name, data_json(data)?, correlation_id);
        let event = publishing_from_python(&event, || inner.bus.publish(event.clone()));
        Ok((event.id().to_owned(), event.time_unix_nanos(), event.seq()))
    }

    /// Publishes and waits for every plugin it matched; the report as JSON:
    /// `{"id", "seq", "deliveries": [{"handler", "outcome", ...}]}`.
    #[pyo3(signature = (name, data, correlation_id=None))]
    fn emit_and_wait(
        &self,
        py: Python<'_>,
        name: &str,
        data: &Bound<'_, PyAny>,
        correlation_id: Option<String>,
    ) -> PyResult<String> {
        let inner = self.live()?;
        let event = event(name, data_json(data)?, correlation_id);
        let report = py.detach(|| {
            publishing_from_python(&event, || {
                inner.runtime.block_on(inner.bus.publish_and_wait(event.clone()))
            })
        });
        let deliveries: Vec<serde_json::Value> = report
            .deliveries
            .iter()
            // The forwarder to Python handlers is not a plugin.
            .filter(|d| !d.handler.starts_with("native#"))
            .map(|d| {
                let mut v = outcome_json(&d.outcome);
                v["handler"] = d.handler.clone().into();
                v
            })
            .collect();
        Ok(serde_json::json!({
            "id": report.event.id(),
            "seq": report.event.seq(),
            "deliveries": deliveries,
        })
        .to_string())
    }

    /// Maps one OTLP trace export body (`ExportTraceServiceRequest`,
    /// protobuf or OTLP JSON by `content_type`) to events and publishes
    /// them, as `POST /v1/traces` does (docs/opentelemetry.md); returns once
    /// they are durable when the bus has a log. The summary as JSON:
    /// `{"spans", "mapped", "dropped", "rejected": [{"span", "reason"}],
    /// "published", "duplicates", "invalid_attributes"}`. `all_spans` passes
    /// non-GenAI spans through as `otel.span`; it is read at every call
    /// (exporters of both settings may share a bus).
    /// `PlugbusError` names what is wrong with a body that cannot be read.
    #[pyo3(signature = (body, content_type="application/x-protobuf", all_spans=false))]
    fn export_otlp(&self, py: Python<'_>, body: &[u8], content_type: &str, all_spans: bool) -> PyResult<String> {
        let inner = self.live()?;
        let encoding =
            plugbus::otlp::Encoding::of(Some(content_type)).map_err(|e| PlugbusError::new_err(e.to_string()))?;
        let receiver = inner.otlp[usize::from(all_spans)]
            .get_or_init(|| plugbus::otlp::Receiver::new(plugbus::otlp::MapOptions { all_spans }));
        let export = py
            .detach(|| {
                inner
                    .runtime
                    .block_on(receiver.export(&inner.bus, body, encoding, None))
            })
            .map_err(|e| PlugbusError::new_err(e.to_string()))?;
        let rejected: Vec<serde_json::Value> = export
            .rejected
            .iter()
            .map(|r| serde_json::json!({ "span": r.span, "reason": r.reason }))
            .collect();
        Ok(serde_json::json!({
            "spans": export.spans,
            "mapped": export.mapped,
            "dropped": export.dropped,
            "rejected": rejected,
            "published": export.published,
            "duplicates": export.duplicates,
            "invalid_attributes": export.invalid_attributes,
        })
        .to_string())
    }

    /// Waits until every queued event, follow-ups included, was handled.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.live()?;
        py.detach(|| inner.runtime.block_on(inner.bus.flush()));
        Ok(())
    }

    /// Every loaded plugin (state, subscriptions, stats) as JSON.
    fn plugins(&self) -> PyResult<String> {
        let inner = self.live()?;
        serde_json::to_string(&inner.bus.plugins()).map_err(|e| PlugbusError::new_err(e.to_string()))
    }

    /// The plugins that failed to load, as JSON.
    fn load_failures(&self) -> PyResult<String> {
        let inner = self.live()?;
        serde_json::to_string(&inner.bus.load_failures()).map_err(|e| PlugbusError::new_err(e.to_string()))
    }

    /// The event log's progress and losses as JSON (`None` without a log):
    /// `last_seq`, `durable_seq`, `lost`, `oversize`, `failed`, ...
    fn log_status(&self) -> PyResult<Option<String>> {
        let inner = self.live()?;
        inner
            .bus
            .log_status()
            .map(|status| serde_json::to_string(&status).map_err(|e| PlugbusError::new_err(e.to_string())))
            .transpose()
    }

    /// Asks a plugin's read model; `(as_of_seq, answer JSON)`.
    fn query(&self, py: Python<'_>, plugin: &str, request: &str) -> PyResult<(Option<u64>, String)> {
        let inner = self.live()?;
        match py.detach(|| inner.runtime.block_on(inner.bus.query(plugin, request))) {
            Ok(answer) => Ok((answer.as_of_seq, answer.answer.get().to_owned())),
            Err(e) => Err(QueryError::new_err((e.kind(), e.to_string()))),
        }
    }

    /// The next follow-up for Python handlers, waiting up to `timeout_ms`.
    fn next_follow_up(&self, py: Python<'_>, timeout_ms: u64) -> PyResult<Option<FollowUp>> {
        let inner = self.live()?;
        let received = py.detach(|| lock(&inner.follow_ups).recv_timeout(Duration::from_millis(timeout_ms)));
        match received {
            Ok(e) => Ok(Some((
                e.name().to_owned(),
                e.payload_json().to_owned(),
                e.id().to_owned(),
                e.time_unix_nanos(),
                e.correlation_id().map(str::to_owned),
                e.source().to_owned(),
                e.seq(),
            ))),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(PlugbusError::new_err("the bus is shut down")),
        }
    }

    /// Follow-ups sent to Python so far (for `flush`).
    fn forwarded(&self) -> PyResult<u64> {
        Ok(self.live()?.forwarded.load(Ordering::Acquire))
    }

    /// Stops accepting events, drains every plugin queue (up to the grace
    /// period), stops the runtime. Idempotent. In a forked child it only
    /// forgets the parent's bus.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let Some(inner) = lock(&self.inner).take() else {
            return Ok(());
        };
        if inner.pid != std::process::id() {
            // The runtime's threads do not exist here; leak rather than join them.
            std::mem::forget(inner);
            return Ok(());
        }
        py.detach(|| {
            inner.runtime.block_on(inner.bus.shutdown());
        });
        if let Ok(inner) = Arc::try_unwrap(inner) {
            py.detach(|| inner.runtime.shutdown_timeout(Duration::from_secs(5)));
        }
        Ok(())
    }

    /// Whether `shutdown` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).is_none()
    }
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeBus>()?;
    m.add("PlugbusError", m.py().get_type::<PlugbusError>())?;
    m.add("QueryError", m.py().get_type::<QueryError>())?;
    Ok(())
}
