//! Host-side bindings generated from `wit/` (the single source of truth).
//!
//! Imports are synchronous and `trappable` (so `host.abort` can stop the
//! guest); exports are called with wasmtime's async entry points so a plugin
//! waiting inside WASI can be bounded by a timer.
//!
//! Three worlds: `observer` (what every plugin exports), `stateful-observer`
//! (the optional `state` export, since 0.1.1) and `queryable-observer` (the
//! optional `query` export, since 0.1.2). The last two reuse the first's
//! types and host imports; only their own export is used, looked up per
//! plugin, so plugins without it load unchanged.

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
pub(crate) const HANDLER_EXPORT: &str = "plugbus:observer/handler@0.1.2";

/// The optional export of plugins whose state survives traps (since 0.1.1).
pub(crate) const STATE_EXPORT: &str = "plugbus:observer/state@0.1.2";

/// The optional export of plugins that answer queries (since 0.1.2).
pub(crate) const QUERY_EXPORT: &str = "plugbus:observer/query@0.1.2";
