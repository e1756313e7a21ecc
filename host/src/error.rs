//! Errors returned by the bus itself (plugin load errors live in
//! [`crate::plugin`], pattern errors in [`crate::pattern`]).

use std::path::PathBuf;

/// Why a [`Bus`](crate::Bus) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The plugin directory is missing or unreadable.
    #[error("plugin directory {}: {source}", path.display())]
    PluginDir {
        /// The directory given to [`BusBuilder::plugin_dir`](crate::BusBuilder::plugin_dir).
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The wasmtime engine could not be created.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
    /// The plugin directory cannot be watched (or `watch` was asked for
    /// without a plugin directory).
    #[error("cannot watch the plugin directory: {0}")]
    Watch(String),
    /// The event log could not be opened.
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    /// A schema could not be read or compiled.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaLoadError),
    /// The NATS server or stream could not be used.
    #[cfg(feature = "nats")]
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsError),
    /// `build()` was awaited outside a tokio runtime.
    #[error("the bus must be built inside a tokio runtime")]
    NoRuntime,
}
