//! Host-side bindings generated from `wit/` (the single source of truth).
//!
//! Imports are synchronous and `trappable` (so `host.abort` can stop the
//! guest); exports are called with wasmtime's async entry points so a plugin
//! waiting inside WASI can be bounded by a timer.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "observer",
    imports: { default: trappable },
    exports: { default: async },
});

/// The export every plugin must provide.
pub(crate) const HANDLER_EXPORT: &str = "plugbus:observer/handler@0.1.0";
