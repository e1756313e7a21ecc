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
    /// The request journal beside the log cannot be opened.
    #[error(transparent)]
    Journal(#[from] crate::http::JournalError),
    /// The capability policy file cannot be used.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyFileError),
    /// The trusted keys cannot be read, or signatures are required without any.
    #[error("plugin signatures: {0}")]
    Signature(#[from] crate::signature::SignatureError),
    /// A schema could not be read or compiled.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaLoadError),
    /// The NATS server or stream could not be used.
    #[cfg(feature = "nats")]
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsError),
    /// Both an event log and NATS were asked for. On NATS the stream is the
    /// one history: its sequence numbers number events, and replay, queries
    /// and a new plugin's catch-up read it. A local log would number the
    /// same events a second way (snapshots in one scheme, resumed in the
    /// other; a `replay = "all"` plugin would catch up from both and see
    /// each event twice), so the combination is refused.
    #[cfg(feature = "nats")]
    #[error(
        "an event log (`--log`, BusBuilder::log_dir) and NATS (`--nats`, BusBuilder::nats) cannot be used together: \
         on NATS the stream is the one history (its sequence numbers number events; replay, queries and catch-up \
         read it), and a local log would number the same events a second way, so a `replay = \"all\"` plugin \
         would see each event twice; drop `--log` and read the stream with `plugbus replay --nats`"
    )]
    LogWithNats,
    /// `build()` was awaited outside a tokio runtime.
    #[error("the bus must be built inside a tokio runtime")]
    NoRuntime,
}
