//! Write [plugbus](https://example.invalid/plugbus) observer plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`] (and `Default`, which builds
//! its initial state), exported with [`export_plugin!`]. Build it with
//! `cargo build --target wasm32-wasip2 --release` as a `cdylib`.
//!
//! ```ignore
//! use plugbus_guest::{Event, Plugin, export_plugin, info};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Usage { prompt_tokens: u64, completion_tokens: u64 }
//! #[derive(Deserialize)]
//! struct Response { usage: Usage }
//!
//! #[derive(Default)]
//! struct TokenCounter { total: u64 }
//!
//! impl Plugin for TokenCounter {
//!     fn subscriptions(&self) -> Vec<String> {
//!         vec!["model_responded".into()]
//!     }
//!
//!     fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
//!         let r: Response = event.payload()?;
//!         self.total += r.usage.prompt_tokens + r.usage.completion_tokens;
//!         info!("{} tokens so far", self.total);
//!         if self.total > 100_000 {
//!             plugbus_guest::emit("tokens.high", &serde_json::json!({ "total": self.total }))?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_plugin!(TokenCounter);
//! ```
//!
//! The plugin's state (`self`) lives as long as its instance: across events,
//! and returning `Err` keeps it. When the plugin traps (panic, fuel,
//! deadline, memory) the host builds a fresh instance from `Default` and
//! brings the state back by replaying the events handled since (without the
//! one that trapped), up to a bound. A panic is reported with its message.
//!
//! # State that survives traps, reloads and restarts
//! A plugin whose state type is `Serialize + Deserialize` opts in with one
//! word, and the host then snapshots it every so often (JSON, via serde) so a
//! trap replays only the events since the last snapshot:
//!
//! ```ignore
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct TokenCounter { total: u64 }
//! // impl Plugin for TokenCounter { … }
//! export_plugin!(TokenCounter, state);
//! ```
//!
//! Fields that come from configuration rather than events can be left out
//! of the snapshot with `#[serde(skip, default = "…")]`, so a hot-reloaded
//! version with a new manifest reads them afresh.
//!
//! # A read model the host can query
//! Implement [`Plugin::query`] and add `query` to the export: the plugin
//! becomes a projection that `Bus::query`, `GET /plugins/<name>/query` and
//! `plugbus query` can ask. With `state` too, it survives traps and restarts:
//!
//! ```ignore
//! impl Plugin for TokenCounter {
//!     // subscriptions, on_event as above
//!     fn query(&self, _request: &serde_json::Value) -> plugbus_guest::QueryResult {
//!         Ok(serde_json::json!({ "total": self.total }))
//!     }
//! }
//! export_plugin!(TokenCounter, state, query);
//! ```
//!
//! # Batches
//! Every plugin exported with [`export_plugin!`] also exports WIT 0.1.3's
//! `batch-handler`: when events wait in its queue, the host hands them over
//! in one call, and the SDK runs [`Plugin::on_event`] on each in order,
//! telling the host which event it is on first (`batch-host.begin-event`),
//! so follow-ups, log lines, [`Event::seq`] and the per-event budgets are
//! that event's exactly as in one call per event. Nothing to write: a
//! rebuild against this SDK is enough. A manifest can turn it off with
//! `[limits] max_batch = 1`.
//!
//! # Requests
//! With the `http` feature, [`http`] sends requests through `wasi:http`, to
//! the origins the manifest's `[http]` table grants; replayed events get the
//! recorded answers instead of sending again (docs/http.md).
//!
//! # Files
//! A manifest's `[[dirs]]` grants directories, which `std::fs` reaches at
//! their guest paths. What an event changes there is changed once: while an
//! event is handled again (the replay after a trap, a failed batch's events
//! run again, a catch-up after a restart) writes succeed and are dropped,
//! and renames, removals and truncations do nothing. Open a file you write
//! event by event in append mode (`OpenOptions::new().append(true)`), as
//! `audit-log` does, and write each event's bytes during its own call (no
//! `BufWriter` flushed by a later event); docs/durability.md has the rest.

#[cfg(feature = "http")]
pub mod http;

// Lets the generated bindings name this crate as `::plugbus_guest` both here
// and in the plugins that expand `export_plugin!`.
extern crate self as plugbus_guest;

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

/// Bindings generated from the `wit/` package: the single source of truth.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "batch-observer",
        pub_export_macro: true,
        export_macro_name: "__export_observer",
        default_bindings_module: "::plugbus_guest::bindings",
        runtime_path: "::plugbus_guest::__wit_bindgen::rt",
    });
}

/// The worlds a plugin opts into, encoded as component-type sections (see
/// `build.rs`). `export_plugin!` places one, with the exports written out by
/// hand below, in the plugins that opt in and only there: wit-bindgen would
/// embed its section in every plugin that links the SDK, making each claim
/// exports it lacks.
#[doc(hidden)]
pub mod __world_types {
    macro_rules! world_type {
        ($name:ident, $file:literal) => {
            pub const $name: [u8; include_bytes!(concat!(env!("OUT_DIR"), "/", $file)).len()] =
                *include_bytes!(concat!(env!("OUT_DIR"), "/", $file));
        };
    }
    world_type!(STATEFUL, "stateful-observer.type");
    world_type!(QUERYABLE, "queryable-observer.type");
    world_type!(PROJECTION, "projection.type");
}

/// The canonical ABI of `state.snapshot`, `state.restore` and
/// `query.query` (WIT 0.1.3): each returns a `result` through a 12-byte
/// return area (discriminant at 0, the list or string at 4 and 8), released
/// by its post-return function.
#[doc(hidden)]
pub mod __export_abi {
    use std::cell::UnsafeCell;

    #[repr(C, align(4))]
    pub struct RetArea(UnsafeCell<[u8; 12]>);
    // A component instance is single-threaded: one call at a time.
    unsafe impl Sync for RetArea {}
    static RET: RetArea = RetArea(UnsafeCell::new([0; 12]));

    /// Writes `result` into the return area, handing the bytes to the host.
    fn ret(result: Result<Option<Box<[u8]>>, Box<[u8]>>) -> *mut u8 {
        let (disc, bytes) = match result {
            Ok(bytes) => (0u8, bytes),
            Err(msg) => (1u8, Some(msg)),
        };
        let area = RET.0.get().cast::<u8>();
        // SAFETY: the area is 12 bytes, 4-aligned, and only this call uses it.
        unsafe {
            *area = disc;
            let (ptr, len) = match bytes {
                Some(b) => {
                    let len = b.len();
                    (Box::into_raw(b).cast::<u8>() as usize, len)
                }
                None => (0, 0),
            };
            area.add(4).cast::<u32>().write(ptr as u32);
            area.add(8).cast::<u32>().write(len as u32);
        }
        area
    }

    /// Frees what `ret` handed out, once the host has copied it.
    ///
    /// # Safety
    /// `area` is the pointer `ret` returned.
    pub unsafe fn post_return(area: *mut u8) {
        // SAFETY: per the contract, `area` holds what `ret` wrote.
        unsafe {
            let ptr = area.add(4).cast::<u32>().read() as usize as *mut u8;
            let len = area.add(8).cast::<u32>().read() as usize;
            if !ptr.is_null() {
                drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)));
            }
        }
    }

    pub fn snapshot(result: Result<Vec<u8>, String>) -> *mut u8 {
        ret(result
            .map(|v| Some(v.into_boxed_slice()))
            .map_err(|e| e.into_bytes().into_boxed_slice()))
    }

    /// Takes ownership of the list or string the host wrote with `cabi_realloc`.
    ///
    /// # Safety
    /// `ptr`/`len` are the arguments of the `restore` or `query` export.
    pub unsafe fn take_arg(ptr: *mut u8, len: usize) -> Vec<u8> {
        if len == 0 {
            return Vec::new();
        }
        // SAFETY: the host allocated `len` bytes at `ptr` with alignment 1
        // through this module's `cabi_realloc` (the global allocator).
        unsafe { Vec::from_raw_parts(ptr, len, len) }
    }

    pub fn restore(result: Result<(), String>) -> *mut u8 {
        ret(result.map(|()| None).map_err(|e| e.into_bytes().into_boxed_slice()))
    }

    pub fn query(result: Result<String, String>) -> *mut u8 {
        ret(result
            .map(|v| Some(v.into_bytes().into_boxed_slice()))
            .map_err(|e| e.into_bytes().into_boxed_slice()))
    }
}

pub use bindings::plugbus::observer::types::Level;
use bindings::plugbus::observer::{batch_host, host};

/// An event delivered to the plugin.
#[derive(Debug, Clone)]
pub struct Event {
    /// Dot-separated name, e.g. `model_responded`.
    pub name: String,
    /// Unique, time-ordered id (UUIDv7 text).
    pub id: String,
    /// Creation time, nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// Correlation id of the agent run, if any.
    pub correlation_id: Option<String>,
    /// `"host"` or the emitting plugin's name.
    pub source: String,
    /// The payload as JSON text.
    pub payload: String,
    /// Its place in the bus's publish order (the event log's sequence
    /// number when the host keeps a log). `None` on hosts older than WIT 0.1.1.
    pub seq: Option<u64>,
}

impl Event {
    /// Parses the payload into `T`.
    ///
    /// # Errors
    /// When the payload does not fit `T`.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> std::result::Result<T, Error> {
        serde_json::from_str(&self.payload).map_err(|e| Error(format!("event `{}`: bad payload: {e}", self.name)))
    }

    /// Parses the payload into a `serde_json::Value`.
    ///
    /// # Errors
    /// When the payload is not JSON (the host never sends such a payload).
    pub fn json(&self) -> std::result::Result<serde_json::Value, Error> {
        self.payload()
    }
}

#[doc(hidden)]
impl From<bindings::plugbus::observer::types::Event> for Event {
    fn from(e: bindings::plugbus::observer::types::Event) -> Self {
        Event {
            name: e.name,
            id: e.id,
            time_unix_nanos: e.time_unix_nanos,
            correlation_id: e.correlation_id,
            source: e.source,
            payload: e.payload,
            seq: host::event_seq(),
        }
    }
}

/// A handled failure: the host logs and counts it and keeps the instance.
///
/// Anything printable converts into it, so `?` works on most errors.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// The message reported to the host.
    pub fn message(&self) -> &str {
        &self.0
    }
}

// `Error` deliberately does not implement `Display`, which lets this blanket
// conversion coexist with `impl From<T> for T`.
impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

/// What [`Plugin::on_event`] returns.
pub type Result = std::result::Result<(), Error>;

/// An observer plugin.
pub trait Plugin: Default + 'static {
    /// Event-name patterns to subscribe to (`*` one segment, trailing `**`
    /// one or more, `*` alone everything). A manifest's `subscriptions`
    /// overrides this.
    fn subscriptions(&self) -> Vec<String>;

    /// Handles one event.
    ///
    /// # Errors
    /// An `Err` is reported to the host as a handled error.
    fn on_event(&mut self, event: &Event) -> Result;

    /// Answers a query about the state (a read model's question: "what did
    /// run 42 cost?"). Exported only by `export_plugin!(T, query)` or
    /// `export_plugin!(T, state, query)`; otherwise the host knows the
    /// plugin answers no queries and never calls it.
    ///
    /// The host calls it between two events, so `self` is the state after
    /// exactly the events handled so far. It takes `&self`: a query must not
    /// change what later events see (replays never run queries), and the
    /// host refuses [`emit`] meanwhile.
    ///
    /// ```ignore
    /// fn query(&self, request: &serde_json::Value) -> plugbus_guest::QueryResult {
    ///     match request.get("total") {
    ///         Some(_) => Ok(serde_json::json!({ "total": self.total })),
    ///         None => Err("ask for {\"total\": true}".into()),
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    /// An `Err` is passed to the caller as the plugin's refusal (an HTTP 422).
    fn query(&self, request: &serde_json::Value) -> QueryResult {
        let _ = request;
        Err(Error("this plugin answers no queries".into()))
    }
}

/// What [`Plugin::query`] returns: the answer as JSON, or a refusal.
pub type QueryResult = std::result::Result<serde_json::Value, Error>;

/// Writes a log line through the host (tagged with the plugin and event).
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// Emits a follow-up event with a JSON payload.
///
/// # Errors
/// When the payload cannot be serialised, or the host refuses the event (bad
/// name, emit budget used up, cascade too deep).
pub fn emit<T: serde::Serialize + ?Sized>(name: &str, payload: &T) -> Result {
    let json = serde_json::to_string(payload)?;
    emit_json(name, &json)
}

/// Emits a follow-up event whose payload is already JSON text.
///
/// # Errors
/// When the host refuses the event.
pub fn emit_json(name: &str, payload: &str) -> Result {
    host::emit(name, payload).map_err(Error)
}

/// A value from the `[config]` table of the plugin's manifest.
pub fn config(key: &str) -> Option<String> {
    host::config(key)
}

/// Logs at the given level with `format!` syntax: `log!(Level::Info, "x = {x}")`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => { $crate::log($level, &::std::format!($($arg)*)) };
}
/// Logs at `trace` level with `format!` syntax.
#[macro_export]
macro_rules! trace { ($($arg:tt)*) => { $crate::log!($crate::Level::Trace, $($arg)*) }; }
/// Logs at `debug` level with `format!` syntax.
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log!($crate::Level::Debug, $($arg)*) }; }
/// Logs at `info` level with `format!` syntax.
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log!($crate::Level::Info, $($arg)*) }; }
/// Logs at `warn` level with `format!` syntax.
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log!($crate::Level::Warn, $($arg)*) }; }
/// Logs at `error` level with `format!` syntax.
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log!($crate::Level::Error, $($arg)*) }; }

/// Runs `f` on the plugin's state, creating it on first use and installing
/// the panic hook. Used by [`export_plugin!`].
#[doc(hidden)]
pub fn __with_state<P: Plugin, R>(
    state: &'static std::thread::LocalKey<std::cell::RefCell<Option<P>>>,
    f: impl FnOnce(&mut P) -> R,
) -> R {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| host::abort(&info.to_string())));
    });
    state.with(|cell| {
        let mut slot = cell.borrow_mut();
        f(slot.get_or_insert_with(P::default))
    })
}

/// Handles a batch, for the `batch-handler.on-events` export: each event
/// in order through [`Plugin::on_event`], telling the host first which
/// event it is on, so follow-ups, log lines and budgets are that event's.
#[doc(hidden)]
pub fn __on_events<P: Plugin>(
    state: &'static std::thread::LocalKey<std::cell::RefCell<Option<P>>>,
    events: Vec<bindings::plugbus::observer::types::Event>,
) -> Vec<std::result::Result<(), String>> {
    __with_state(state, |p| {
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                // The host refuses more than u32::MAX events per batch long before.
                batch_host::begin_event(i as u32);
                p.on_event(&Event::from(event)).map_err(|e| e.0)
            })
            .collect()
    })
}

/// The plugin's state as JSON, for the `state.snapshot` export.
#[doc(hidden)]
pub fn __snapshot<P: Plugin + serde::Serialize>(
    state: &'static std::thread::LocalKey<std::cell::RefCell<Option<P>>>,
) -> std::result::Result<Vec<u8>, String> {
    __with_state(state, |p| {
        serde_json::to_vec(p).map_err(|e| format!("cannot serialise the state: {e}"))
    })
}

/// Replaces the plugin's state with a snapshot, for the `state.restore` export.
#[doc(hidden)]
pub fn __restore<P: Plugin + serde::de::DeserializeOwned>(
    state: &'static std::thread::LocalKey<std::cell::RefCell<Option<P>>>,
    bytes: &[u8],
) -> std::result::Result<(), String> {
    let restored: P = serde_json::from_slice(bytes).map_err(|e| format!("cannot read the snapshot: {e}"))?;
    __with_state(state, |p| *p = restored);
    Ok(())
}

/// Answers a query with the plugin's state, for the `query.query` export.
#[doc(hidden)]
pub fn __query<P: Plugin>(
    state: &'static std::thread::LocalKey<std::cell::RefCell<Option<P>>>,
    request: &[u8],
) -> std::result::Result<String, String> {
    let request: serde_json::Value =
        serde_json::from_slice(request).map_err(|e| format!("the query is not JSON: {e}"))?;
    let answer = __with_state(state, |p| p.query(&request)).map_err(|e| e.0)?;
    serde_json::to_string(&answer).map_err(|e| format!("cannot serialise the answer: {e}"))
}

/// Exports a [`Plugin`] type as the component's `handler`. Options, in this
/// order:
/// - `state`: also as its `state` (snapshot and restore through serde JSON,
///   for a type that is `Serialize + Deserialize`), so the host can bring
///   its state back after a trap, a hot reload or a restart without
///   replaying every event;
/// - `query`: also as its `query`, answered by [`Plugin::query`], making
///   the plugin a read model the host can ask (`Bus::query`, HTTP, CLI).
///
/// `export_plugin!(T, state, query)` makes a durable, queryable projection.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty, state, query) => {
        $crate::export_plugin!(@handler $plugin);
        $crate::export_plugin!(@world "component-type:plugbus:observer@0.1.3:projection", PROJECTION);
        $crate::export_plugin!(@state $plugin);
        $crate::export_plugin!(@query $plugin);
    };
    ($plugin:ty, state) => {
        $crate::export_plugin!(@handler $plugin);
        $crate::export_plugin!(@world "component-type:plugbus:observer@0.1.3:stateful-observer", STATEFUL);
        $crate::export_plugin!(@state $plugin);
    };
    ($plugin:ty, query) => {
        $crate::export_plugin!(@handler $plugin);
        $crate::export_plugin!(@world "component-type:plugbus:observer@0.1.3:queryable-observer", QUERYABLE);
        $crate::export_plugin!(@query $plugin);
    };
    ($plugin:ty) => {
        $crate::export_plugin!(@handler $plugin);
    };
    (@world $section:literal, $world:ident) => {
        const _: () = {
            #[cfg(target_arch = "wasm32")]
            #[unsafe(link_section = $section)]
            #[used]
            static __PLUGBUS_WORLD: [u8; $crate::__world_types::$world.len()] = $crate::__world_types::$world;
        };
    };
    (@state $plugin:ty) => {
        const _: () = {
            #[unsafe(export_name = "plugbus:observer/state@0.1.3#snapshot")]
            unsafe extern "C" fn __plugbus_export_snapshot() -> *mut u8 {
                $crate::__export_abi::snapshot($crate::__snapshot::<$plugin>(&__PLUGBUS_STATE))
            }
            #[unsafe(export_name = "cabi_post_plugbus:observer/state@0.1.3#snapshot")]
            unsafe extern "C" fn __plugbus_post_snapshot(area: *mut u8) {
                unsafe { $crate::__export_abi::post_return(area) }
            }
            #[unsafe(export_name = "plugbus:observer/state@0.1.3#restore")]
            unsafe extern "C" fn __plugbus_export_restore(ptr: *mut u8, len: usize) -> *mut u8 {
                let bytes = unsafe { $crate::__export_abi::take_arg(ptr, len) };
                $crate::__export_abi::restore($crate::__restore::<$plugin>(&__PLUGBUS_STATE, &bytes))
            }
            #[unsafe(export_name = "cabi_post_plugbus:observer/state@0.1.3#restore")]
            unsafe extern "C" fn __plugbus_post_restore(area: *mut u8) {
                unsafe { $crate::__export_abi::post_return(area) }
            }
        };
    };
    (@query $plugin:ty) => {
        const _: () = {
            #[unsafe(export_name = "plugbus:observer/query@0.1.3#query")]
            unsafe extern "C" fn __plugbus_export_query(ptr: *mut u8, len: usize) -> *mut u8 {
                let request = unsafe { $crate::__export_abi::take_arg(ptr, len) };
                $crate::__export_abi::query($crate::__query::<$plugin>(&__PLUGBUS_STATE, &request))
            }
            #[unsafe(export_name = "cabi_post_plugbus:observer/query@0.1.3#query")]
            unsafe extern "C" fn __plugbus_post_query(area: *mut u8) {
                unsafe { $crate::__export_abi::post_return(area) }
            }
        };
    };
    (@handler $plugin:ty) => {
        ::std::thread_local! {
            static __PLUGBUS_STATE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }
        const _: () = {
            struct Export;
            impl $crate::bindings::exports::plugbus::observer::handler::Guest for Export {
                fn subscriptions() -> ::std::vec::Vec<::std::string::String> {
                    $crate::__with_state(&__PLUGBUS_STATE, |p| <$plugin as $crate::Plugin>::subscriptions(p))
                }
                fn on_event(
                    event: $crate::bindings::plugbus::observer::types::Event,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    let event = $crate::Event::from(event);
                    $crate::__with_state(&__PLUGBUS_STATE, |p| <$plugin as $crate::Plugin>::on_event(p, &event))
                        .map_err(|e| e.message().to_owned())
                }
            }
            impl $crate::bindings::exports::plugbus::observer::batch_handler::Guest for Export {
                fn on_events(
                    events: ::std::vec::Vec<$crate::bindings::plugbus::observer::types::Event>,
                ) -> ::std::vec::Vec<::core::result::Result<(), ::std::string::String>> {
                    $crate::__on_events::<$plugin>(&__PLUGBUS_STATE, events)
                }
            }
    $crate::bindings::__export_observer!(Export with_types_in $crate::bindings);
        };
    };
}
