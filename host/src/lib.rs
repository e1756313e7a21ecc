//! plugbus: an in-process event bus whose observers are sandboxed
//! WebAssembly components.
//!
//! An agent loop emits events (`model_responded`, `tool.called`, …);
//! observers subscribe by pattern. Observers are either native Rust closures
//! or `.wasm` plugins implementing the `plugbus:observer` WIT world. Each
//! plugin runs in its own wasmtime `Store` with fuel, a wall-clock deadline
//! and a memory cap, on its own queue and worker task: a plugin that panics,
//! loops, exhausts memory or returns an error fails alone. The emitter never
//! sees an error and never waits for a plugin.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use serde_json::json;
//! let bus = plugbus::Bus::builder()
//!     .plugin_dir("plugins/dist")          // every *.wasm there
//!     .limits(plugbus::Limits::default())   // fuel, deadline, memory, queue
//!     .history(100)
//!     .build()
//!     .await?;
//! let sub = bus.on("llm.*", |e| println!("{}", e.name()))?;
//! bus.emit("llm.call", json!({ "tokens": 12 }));
//! let report = bus.emit_and_wait("model_responded", json!({ "tokens": 12 })).await;
//! println!("{:?}", report.deliveries);
//! bus.off(&sub);
//! bus.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! Dependencies run one way, top to bottom; no module imports one above it.
//!
//! - [`otlp`]: OpenTelemetry in: OTLP/HTTP trace requests whose GenAI spans
//!   become events (`otlp::genai`, the mapping; docs/opentelemetry.md);
//! - [`replay`]: feeding logged events into fresh plugins (`plugbus replay`);
//! - [`bus`]: the [`Bus`] handle and its state (`Shared`, one home): emit,
//!   flush, shutdown, redrive;
//!   - [`bus::builder`]: [`BusBuilder`], configuration resolved before anything starts;
//!   - `bus::lifecycle`: loading, hot-swapping and unloading plugins;
//!   - `bus::watch`: the plugin directory watcher (hot reload);
//!   - `bus::registry`: the lock-free subscription index;
//!   - `bus::native`: native handlers (priority, `once`), isolated with `catch_unwind`;
//!   - `bus::history`: the optional ring of recent events;
//!   - [`bus::pacer`]: feeding a stream of events as fast as the plugins run, dropping nothing;
//!   - [`bus::startup`]: plugins loading in the background while the bus
//!     accepts events ([`BusBuilder::start`], `/readyz`);
//! - [`plugin`]: one plugin: loading and validating a `.wasm`, building
//!   instances, calling them; it reaches the bus only through `plugin::port`;
//!   - `plugin::worker`: the task that owns a plugin's store and runs its queue;
//!   - `plugin::recovery`: snapshots and replay that bring state back after a trap;
//!   - `plugin::catch_up`: a plugin loaded with `replay = "all"` handles the log first;
//!   - `plugin::ctx`: what an instance can reach (host imports, WASI, budgets);
//!   - `plugin::determinism`: virtual clocks and seeded randomness per event;
//!   - `plugin::granted_dirs`: the granted directories, unchanged by an event handled again;
//!   - `plugin::engine`, `plugin::bindings`: the wasmtime engine, linker and WIT bindings;
//!   - `plugin::port`: the narrow handle plugin code reaches the bus through;
//!   - `plugin::producers`: a plugin's source language, read from the component;
//! - [`log`]: the embedded event log (segments, writer thread, reader);
//! - [`dead_letter`]: the events that failed a plugin hard;
//! - [`query`]: asking a plugin's read model (answers, typed errors, bounds);
//! - [`cloudevents`]: CloudEvents 1.0 in (structured, batch, binary) and out;
//! - [`schema`]: JSON Schemas per event name, checked at emit;
//! - [`nats`]: scale-out on NATS JetStream (publisher, per-plugin consumers);
//! - [`failpoint`]: named fault-injection points (the `failpoints` feature);
//! - [`cache`]: compiled artifacts on disk, verified before use;
//! - [`http`]: outbound requests for plugins (`wasi:http`): grants, the
//!   address check, the request journal that keeps replay from sending twice;
//! - [`signature`], [`policy`]: which plugins may load (minisign signatures)
//!   and what their manifests may grant;
//! - [`oci`]: plugins in OCI registries (push, verified pull, `plugins.lock`);
//!   below the bus: it only writes plugin directories, which the bus loads;
//! - [`fleet`]: one plugin set for a NATS fleet (a JetStream key-value
//!   bucket each host converges its plugin directory on, through `oci`);
//! - `kv_bucket`: JetStream key-value buckets made the way Debian's
//!   nats-server 2.9 accepts (the fleet's, the request journal's);
//! - [`event`], [`pattern`], [`limits`], [`manifest`], [`outcome`], [`stats`],
//!   [`text`], [`ingest`], [`error`]: the vocabulary every layer shares;
//!   `sync`: the poison-tolerant lock every layer uses; [`ring`]: the
//!   count- and byte-bounded ring of recent events (the history, the
//!   dashboard's tail); `files`: reading only regular files, bounded (no
//!   FIFO or device hangs a load).

pub mod bus;
pub mod cache;
pub mod cloudevents;
pub mod dead_letter;
pub mod error;
pub mod event;
pub mod failpoint;
pub(crate) mod files;
#[cfg(all(feature = "oci", feature = "nats"))]
pub mod fleet;
pub mod http;
pub mod ingest;
#[cfg(feature = "nats")]
mod kv_bucket;
pub mod limits;
pub mod log;
pub mod manifest;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "oci")]
pub mod oci;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod outcome;
pub mod pattern;
pub mod plugin;
pub mod policy;
#[cfg(any(test, feature = "failpoints"))]
pub mod power_loss;
pub mod query;
pub mod replay;
pub mod ring;
pub mod schema;
pub mod signature;
pub mod stats;
pub(crate) mod sync;
pub mod text;

pub use bus::builder::BusBuilder;
pub use bus::lifecycle::Reload;
pub use bus::native::HandlerOptions;
pub use bus::pacer::Pacer;
pub use bus::startup::StartupStatus;
pub use bus::{Bus, DEFAULT_SHUTDOWN_GRACE, FailureHook, LoadFailure, Published, ShutdownReport, Subscription};
pub use cache::{CacheStats, default_cache_dir};
pub use dead_letter::{DeadLetter, DeadLetterError, Redrive, read_dead_letters, read_dead_letters_past_damage};
pub use error::Error;
pub use event::{Event, MAX_CORRELATION_ID_BYTES, PayloadOut, check_external_id};
pub use ingest::{IngestError, parse_event_line, parse_event_value};
pub use limits::{Limits, MAX_CASCADE_DEPTH};
pub use log::{
    Durability, EventLog, LogError, LogOptions, LogPosition, LogReader, LogStats, LogStatus, Record, TornTail,
};
pub use manifest::{Manifest, ManifestError};
#[cfg(feature = "nats")]
pub use nats::{NatsError, NatsOptions, NatsStatus};
pub use outcome::{Delivery, DeliveryReport, DropReason, Failure, Outcome};
pub use pattern::{Pattern, PatternError, validate_event_name};
pub use plugin::{LoadError, LoadErrorKind, PluginCheck, PluginInfo, PluginState};
pub use policy::{Policy, PolicyFileError, PolicyViolation};
pub use query::{QueryAnswer, QueryError};
pub use replay::{Replay, ReplayEmit, ReplayError, ReplayReport};
pub use schema::{SchemaError, SchemaPolicy};
pub use signature::{SignatureError, SignaturePolicy, Signer, TrustedKeys};
pub use stats::{FailureCounts, LATENCY_BOUNDS, LastFailure, LatencyHistogram, PluginStats};
