//! Reading events from JSON Lines, as `plugbus run` does:
//! `{"name": "...", "payload": {...}, "correlation_id": "..."}` per line.

use serde::Deserialize;
use serde_json::Value;

use crate::event::Event;
use crate::pattern::{PatternError, validate_event_name};

/// Why a line is not an event.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Not JSON, not an object, a missing `name`, or an unknown field.
    #[error("invalid event JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The name is not a valid event name.
    #[error("invalid event name: {0}")]
    Name(#[from] PatternError),
    /// The correlation id is empty, too long or holds control characters.
    #[error("invalid correlation_id: {0}")]
    CorrelationId(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    name: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    correlation_id: Option<String>,
}

/// Parses one JSON Lines record into an event. `payload` defaults to `null`.
///
/// # Errors
/// [`IngestError`] saying what is wrong with the line.
///
/// ```
/// let ev = plugbus::parse_event_line(r#"{"name":"tool.called","payload":{"tool":"search"},"correlation_id":"run-1"}"#).unwrap();
/// assert_eq!(ev.name(), "tool.called");
/// assert_eq!(ev.correlation_id(), Some("run-1"));
/// assert!(plugbus::parse_event_line(r#"{"name":"a..b"}"#).is_err());
/// ```
pub fn parse_event_line(line: &str) -> Result<Event, IngestError> {
    let line: Line = serde_json::from_str(line)?;
    validate_event_name(&line.name)?;
    if let Some(id) = &line.correlation_id {
        crate::event::check_external_id(id, crate::event::MAX_CORRELATION_ID_BYTES)
            .map_err(IngestError::CorrelationId)?;
    }
    let event = Event::new(line.name, line.payload);
    Ok(match line.correlation_id {
        Some(id) => event.with_correlation_id(id),
        None => event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_are_refused_with_reasons() {
        assert!(matches!(parse_event_line("{not json"), Err(IngestError::Json(_))));
        assert!(matches!(
            parse_event_line(r#"{"payload":{}}"#),
            Err(IngestError::Json(_))
        ));
        assert!(matches!(
            parse_event_line(r#"{"name":"a","paylod":{}}"#),
            Err(IngestError::Json(_))
        ));
        assert!(matches!(
            parse_event_line(r#"{"name":"a.*"}"#),
            Err(IngestError::Name(_))
        ));
        assert!(matches!(parse_event_line(r#"[1,2]"#), Err(IngestError::Json(_))));
        let ev = parse_event_line(r#"{"name":"a"}"#).unwrap();
        assert!(ev.payload().is_null());
        for id in ["", "a\nb", &"r".repeat(257)] {
            let line = serde_json::json!({"name": "a", "correlation_id": id}).to_string();
            assert!(
                matches!(parse_event_line(&line), Err(IngestError::CorrelationId(_))),
                "{id:?}"
            );
        }
    }
}
