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
//! until the plugin traps (panic, fuel, deadline, memory), after which the
//! host starts a fresh instance from `Default`. Returning `Err` keeps the
//! state. A panic is reported to the host with its message.

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
        world: "observer",
        pub_export_macro: true,
        export_macro_name: "__export_observer",
        default_bindings_module: "::plugbus_guest::bindings",
        runtime_path: "::plugbus_guest::__wit_bindgen::rt",
    });
}

use bindings::plugbus::observer::host;
pub use bindings::plugbus::observer::types::Level;

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
}

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

/// Exports a [`Plugin`] type as the component's `handler`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            ::std::thread_local! {
                static STATE: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }
            struct Export;
            impl $crate::bindings::exports::plugbus::observer::handler::Guest for Export {
                fn subscriptions() -> ::std::vec::Vec<::std::string::String> {
                    $crate::__with_state(&STATE, |p| <$plugin as $crate::Plugin>::subscriptions(p))
                }
                fn on_event(
                    event: $crate::bindings::plugbus::observer::types::Event,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    let event = $crate::Event::from(event);
                    $crate::__with_state(&STATE, |p| <$plugin as $crate::Plugin>::on_event(p, &event))
                        .map_err(|e| e.message().to_owned())
                }
            }
    $crate::bindings::__export_observer!(Export with_types_in $crate::bindings);
        };
    };
}
