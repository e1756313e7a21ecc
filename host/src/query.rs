//! Asking a plugin's read model: the answer ([`QueryAnswer`]), the typed
//! errors ([`QueryError`]), and the limits on what goes in and out.
//!
//! A plugin that exports `query` (WIT 0.1.2) is a CQRS read model: it
//! projects the events it handles into state, and [`Bus::query`](crate::Bus::query)
//! asks it about that state. The query runs on the plugin's own worker
//! between two events, so the answer reflects exactly the events up to
//! [`QueryAnswer::as_of_seq`].

use serde::Serialize;
use serde_json::value::RawValue;

use crate::outcome::Failure;

/// Largest query request the host passes to a plugin, in bytes. A request
/// names what to look up (a run, a filter); 64 KiB is far above that while
/// bounding what one HTTP body can make a plugin parse.
pub const MAX_QUERY_REQUEST_BYTES: usize = 64 << 10;

/// Largest answer the host accepts from a plugin, in bytes. Listing a few
/// hundred runs is tens of KiB; 16 MiB (a snapshot's bound) keeps a runaway
/// answer from filling the host's memory.
pub const MAX_QUERY_ANSWER_BYTES: usize = 16 << 20;

/// Queries waiting for one plugin's worker. They run between events ahead
/// of queued events; 64 waiting callers is far more than a dashboard or a
/// CLI makes, and past it callers get [`QueryError::Busy`] at once instead
/// of piling up behind a slow plugin.
pub(crate) const QUERY_QUEUE: usize = 64;

/// What a plugin answered, and as of which event.
///
/// ```no_run
/// # async fn demo(bus: plugbus::Bus) -> Result<(), plugbus::QueryError> {
/// let answer = bus.query("agent-runs", r#"{"run": "run-42"}"#).await?;
/// println!("as of event {:?}: {}", answer.as_of_seq, answer.answer.get());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct QueryAnswer {
    /// Sequence number of the last event the plugin had handled when it
    /// answered (`None` before its first event). The answer reflects
    /// exactly the plugin's events up to and including this one.
    pub as_of_seq: Option<u64>,
    /// The plugin's answer: JSON text, checked by the host.
    pub answer: Box<RawValue>,
}

impl QueryAnswer {
    /// The answer parsed into `T`.
    ///
    /// # Errors
    /// When the answer does not fit `T`.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.answer.get())
    }
}

/// Why a query got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No plugin of that name is loaded.
    #[error("no plugin named `{0}` is loaded")]
    UnknownPlugin(String),
    /// The plugin does not export `query` (it targets a world without it).
    #[error("plugin `{0}` does not export `query` (it is not a queryable-observer or projection)")]
    NoQueryExport(String),
    /// The request is over [`MAX_QUERY_REQUEST_BYTES`].
    #[error("a {0}-byte query is over the {MAX_QUERY_REQUEST_BYTES}-byte limit")]
    TooLarge(usize),
    /// The plugin answered `err`, or an answer the host cannot pass on (not
    /// JSON, or over [`MAX_QUERY_ANSWER_BYTES`]).
    #[error("plugin `{plugin}` refused the query: {message}")]
    Plugin {
        /// The plugin.
        plugin: String,
        /// Its reason (capped like every guest text).
        message: String,
    },
    /// The query ran out of fuel or time, or hit the memory cap. The plugin
    /// is rebuilt with its state before its next call.
    #[error("plugin `{plugin}` hit a limit answering the query: {failure}")]
    Limit {
        /// The plugin.
        plugin: String,
        /// Which limit.
        failure: Failure,
    },
    /// The plugin trapped (a panic, an unreachable, a host failure) while
    /// answering. It is rebuilt with its state before its next call.
    #[error("plugin `{plugin}` failed answering the query: {failure}")]
    Failed {
        /// The plugin.
        plugin: String,
        /// What happened.
        failure: Failure,
    },
    /// The plugin already has [`QUERY_QUEUE`] queries waiting.
    #[error("plugin `{0}` has too many queries waiting; try again")]
    Busy(String),
    /// The plugin is being unloaded or the bus is shutting down.
    #[error("plugin `{0}` is shutting down")]
    ShuttingDown(String),
}

impl QueryError {
    /// A hard failure during a query, classified: a limit, or a trap.
    pub(crate) fn failed(plugin: &str, failure: Failure) -> QueryError {
        let plugin = plugin.to_owned();
        match failure {
            Failure::OutOfFuel | Failure::Deadline | Failure::MemoryLimit | Failure::StackOverflow => {
                QueryError::Limit { plugin, failure }
            }
            failure => QueryError::Failed { plugin, failure },
        }
    }

    /// A short, stable name for the kind of error (`unknown_plugin`,
    /// `no_query_export`, `too_large`, `plugin_error`, `limit`, `failed`,
    /// `busy`, `shutting_down`), for JSON answers and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::UnknownPlugin(_) => "unknown_plugin",
            QueryError::NoQueryExport(_) => "no_query_export",
            QueryError::TooLarge(_) => "too_large",
            QueryError::Plugin { .. } => "plugin_error",
            QueryError::Limit { .. } => "limit",
            QueryError::Failed { .. } => "failed",
            QueryError::Busy(_) => "busy",
            QueryError::ShuttingDown(_) => "shutting_down",
        }
    }
}

/// Checks a plugin's answer text: JSON, within [`MAX_QUERY_ANSWER_BYTES`].
pub(crate) fn answer(plugin: &str, as_of_seq: Option<u64>, text: String) -> Result<QueryAnswer, QueryError> {
    let refuse = |message: String| QueryError::Plugin {
        plugin: plugin.to_owned(),
        message,
    };
    if text.len() > MAX_QUERY_ANSWER_BYTES {
        return Err(refuse(format!(
            "its {}-byte answer is over the {MAX_QUERY_ANSWER_BYTES}-byte limit",
            text.len()
        )));
    }
    let answer = RawValue::from_string(text).map_err(|e| refuse(format!("its answer is not JSON text: {e}")))?;
    Ok(QueryAnswer { as_of_seq, answer })
}

/// One query waiting for a plugin's worker.
pub(crate) struct QueryJob {
    pub request: String,
    pub reply: tokio::sync::oneshot::Sender<Result<QueryAnswer, QueryError>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_must_be_json() {
        let ok = answer("p", Some(3), r#"{"a": 1}"#.into()).unwrap();
        assert_eq!(ok.as_of_seq, Some(3));
        assert_eq!(ok.parse::<serde_json::Value>().unwrap(), serde_json::json!({"a": 1}));
        let bad = answer("p", None, "not json".into()).unwrap_err();
        assert!(
            matches!(&bad, QueryError::Plugin { message, .. } if message.contains("not JSON")),
            "{bad}"
        );
    }

    #[test]
    fn failures_are_classified() {
        assert_eq!(QueryError::failed("p", Failure::OutOfFuel).kind(), "limit");
        assert_eq!(QueryError::failed("p", Failure::Deadline).kind(), "limit");
        assert_eq!(QueryError::failed("p", Failure::Panic("x".into())).kind(), "failed");
    }
}
