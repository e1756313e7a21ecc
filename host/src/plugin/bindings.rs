//! Host-side bindings generated from `wit/` (the single source of truth).
//!
//! Imports are synchronous and `trappable` (so `host.abort` can stop the
//! guest); exports are called with wasmtime's async entry points so a plugin
//! waiting inside WASI can be bounded by a timer.
//!
//! Worlds: `observer` (what every plugin exports), `stateful-observer`
//! (the optional `state` export, since 0.1.1), `queryable-observer` (the
//! optional `query` export, since 0.1.2) and `batch-observer` (the optional
//! `batch-handler` export, since 0.1.3). The others reuse the first's
//! types and host imports; only their own export is used, looked up per
//! plugin, so plugins without it load unchanged. The batch parts are used
//! without generated bindings: `batch-host.begin-event` is linked by hand
//! (see `engine`), since it needs the store itself to refill fuel and rearm
//! the deadline per event, and `on-events` is called as a typed function
//! over borrowed event records (see `PluginSpec::on_events`), which
//! generated bindings would make the host copy per call.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "observer",
    imports: { default: trappable },
    exports: { default: async },
});

/// Bindings of the `stateful-observer` world; only `exports::…::state` is used.
#[allow(dead_code)]
pub(crate) mod stateful {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "stateful-observer",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "plugbus:observer/types": crate::plugin::bindings::plugbus::observer::types,
            "plugbus:observer/host": crate::plugin::bindings::plugbus::observer::host,
        },
    });
}

/// Bindings of the `queryable-observer` world; only `exports::…::query` is used.
#[allow(dead_code)]
pub(crate) mod queryable {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "queryable-observer",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "plugbus:observer/types": crate::plugin::bindings::plugbus::observer::types,
            "plugbus:observer/host": crate::plugin::bindings::plugbus::observer::host,
        },
    });
}

pub(crate) use queryable::exports::plugbus::observer::query::{Guest as QueryExport, GuestIndices as QueryIndices};
pub(crate) use stateful::exports::plugbus::observer::state::{Guest as StateExport, GuestIndices as StateIndices};

/// The export every plugin must provide. Found in components built against
/// any 0.1.x version of the package (wasmtime matches the `0.1` track).
pub(crate) const HANDLER_EXPORT: &str = "plugbus:observer/handler@0.1.3";

/// The optional export of plugins whose state survives traps (since 0.1.1).
pub(crate) const STATE_EXPORT: &str = "plugbus:observer/state@0.1.3";

/// The optional export of plugins that answer queries (since 0.1.2).
pub(crate) const QUERY_EXPORT: &str = "plugbus:observer/query@0.1.3";

/// The optional export of plugins that take events in batches (since 0.1.3).
pub(crate) const BATCH_EXPORT: &str = "plugbus:observer/batch-handler@0.1.3";

/// The import `batch-handler` plugins call between events (since 0.1.3).
pub(crate) const BATCH_HOST_IMPORT: &str = "plugbus:observer/batch-host@0.1.3";
