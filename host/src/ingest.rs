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
    /// Not a JSON object (an array, a string: serde would read an array as
    /// the fields in order).
    #[error("an event is a JSON object {{\"name\", \"payload\", \"correlation_id\"}}")]
    NotAnObject,
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
    if !line.trim_start().starts_with('{') {
        return Err(IngestError::NotAnObject);
    }
    event_of(serde_json::from_str(line)?)
}

/// [`parse_event_line`] for a record already parsed as JSON (an element of
/// a JSON array of events, say).
///
/// # Errors
/// [`IngestError`] saying what is wrong with the record.
pub fn parse_event_value(value: Value) -> Result<Event, IngestError> {
    if !value.is_object() {
        return Err(IngestError::NotAnObject);
    }
    event_of(serde_json::from_value(value)?)
}

fn event_of(line: Line) -> Result<Event, IngestError> {
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
        assert!(matches!(parse_event_line(r#"[1,2]"#), Err(IngestError::NotAnObject)));
        // Serde alone reads an array as the fields in order.
        assert!(matches!(
            parse_event_line(r#"["tool.called", {"x": 1}, "run-1"]"#),
            Err(IngestError::NotAnObject)
        ));
        assert!(matches!(
            parse_event_value(serde_json::json!(["a", null])),
            Err(IngestError::NotAnObject)
        ));
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
