//! CloudEvents 1.0 in and out: the structured, batched and binary HTTP modes
//! mapped to plugbus events, and an event written as a structured CloudEvent.
//!
//! | CloudEvent | plugbus event |
//! |---|---|
//! | `type` (a valid event name) | name |
//! | `id` | id |
//! | `source` | source |
//! | `time` (RFC 3339; now when absent) | time |
//! | extension `correlationid` | correlation id |
//! | `data` | payload, as it is |
//! | `data_base64` / a binary-mode body | payload: the JSON it holds when the content type is JSON (or absent), the text for `text/*`, else the base64 text |
//!
//! `specversion` must be `1.0`. Other attributes (`subject`, `dataschema`,
//! other extensions) are checked for well-formed names and otherwise not
//! kept. A CloudEvent that breaks a rule is refused with a
//! [`CloudEventError`] naming the attribute.

use base64::Engine;
use serde_json::{Map, Value};

use crate::event::Event;
use crate::pattern::validate_event_name;

use crate::event::MAX_ID_BYTES;
/// Longest `source` accepted, in bytes (a URI reference).
const MAX_SOURCE_BYTES: usize = 1024;

/// A CloudEvent plugbus cannot take, naming the attribute at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}CloudEvent attribute `{attribute}`: {reason}", index.map(|i| format!("event {i}: ")).unwrap_or_default())]
pub struct CloudEventError {
    /// The event's position in a batch (from 0), if it came in one.
    pub index: Option<usize>,
    /// The attribute (`type`, `data_base64`, ...), or `(event)` for the whole.
    pub attribute: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(attribute: &str, reason: impl Into<String>) -> CloudEventError {
    CloudEventError {
        index: None,
        attribute: attribute.to_owned(),
        reason: reason.into(),
    }
}

/// Whether a content type holds JSON (`application/json`, `…+json`); an
/// absent one is JSON too, as the specification's JSON format says.
fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return true };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

fn is_text(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with("text/"))
}

/// The payload for data carried as bytes, by content type.
fn payload_from_bytes(
    attribute: &str,
    content_type: Option<&str>,
    bytes: &[u8],
    base64_text: Option<&str>,
) -> Result<Value, CloudEventError> {
    if is_json(content_type) {
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(bytes)
            .map_err(|e| bad(attribute, format!("not the JSON its content type says: {e}")));
    }
    if is_text(content_type) {
        return std::str::from_utf8(bytes)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|e| bad(attribute, format!("text that is not UTF-8: {e}")));
    }
    Ok(Value::String(match base64_text {
        Some(text) => text.to_owned(),
        None => base64::engine::general_purpose::STANDARD.encode(bytes),
    }))
}

/// A CloudEvents attribute name: lowercase letters and digits, 1 to 20 (the
/// specification's rule for extensions; `data_base64` is the one exception).
fn check_name(name: &str) -> Result<(), CloudEventError> {
    let ok = !name.is_empty() && name.len() <= 20 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok || name == "data_base64" {
        Ok(())
    } else {
        Err(bad(
            name,
            "not a CloudEvents attribute name (lowercase letters and digits, at most 20)",
        ))
    }
}

fn time_nanos(text: &str) -> Result<u64, CloudEventError> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| bad("time", format!("`{text}` is not an RFC 3339 time: {e}")))?;
    let nanos = t.unix_timestamp_nanos();
    u64::try_from(nanos).map_err(|_| {
        let why = if nanos < 0 {
            "before 1970"
        } else {
            // Event times are nanoseconds since 1970 in 64 bits.
            "after 2554-07-21, the last time an event can carry"
        };
        bad("time", format!("`{text}` is {why}"))
    })
}

/// The checked context attributes, whatever the mode carried them in.
struct Context<'a> {
    id: &'a str,
    source: &'a str,
    kind: &'a str,
    time: Option<&'a str>,
    correlation_id: Option<&'a str>,
}

fn event(ctx: Context<'_>, payload: Value) -> Result<Event, CloudEventError> {
    crate::event::check_external_id(ctx.id, MAX_ID_BYTES).map_err(|e| bad("id", e))?;
    crate::event::check_external_id(ctx.source, MAX_SOURCE_BYTES).map_err(|e| bad("source", e))?;
    if let Some(id) = ctx.correlation_id {
        crate::event::check_external_id(id, crate::event::MAX_CORRELATION_ID_BYTES)
            .map_err(|e| bad("correlationid", e))?;
    }
    validate_event_name(ctx.kind).map_err(|e| bad("type", format!("not a plugbus event name: {e}")))?;
    let time = ctx.time.map(time_nanos).transpose()?;
    Ok(Event::external(
        ctx.kind,
        ctx.id,
        ctx.source,
        time,
        ctx.correlation_id.map(str::to_owned),
        payload,
    ))
}

fn string<'a>(object: &'a Map<String, Value>, name: &str, required: bool) -> Result<Option<&'a str>, CloudEventError> {
    match object.get(name) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(bad(name, "required")),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(name, "must be a string")),
    }
}

/// One structured-mode CloudEvent (`application/cloudevents+json`), as a
/// parsed JSON object.
///
/// # Errors
/// A [`CloudEventError`] naming the attribute at fault.
pub fn from_json(value: &Value) -> Result<Event, CloudEventError> {
    let Value::Object(object) = value else {
        return Err(bad("(event)", "a CloudEvent is a JSON object"));
    };
    for name in object.keys() {
        check_name(name)?;
    }
    match string(object, "specversion", true)? {
        Some("1.0") => {}
        Some(other) => return Err(bad("specversion", format!("`{other}` is not supported (only 1.0)"))),
        None => unreachable!("required"),
    }
    let ctx = Context {
        id: string(object, "id", true)?.unwrap_or_default(),
        source: string(object, "source", true)?.unwrap_or_default(),
        kind: string(object, "type", true)?.unwrap_or_default(),
        time: string(object, "time", false)?,
        correlation_id: string(object, "correlationid", false)?,
    };
    let content_type = string(object, "datacontenttype", false)?;
    let payload = match (object.get("data"), string(object, "data_base64", false)?) {
        (Some(_), Some(_)) => return Err(bad("data_base64", "an event has `data` or `data_base64`, not both")),
        (Some(data), None) => data.clone(),
        (None, Some(text)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| bad("data_base64", format!("not base64: {e}")))?;
            payload_from_bytes("data_base64", content_type, &bytes, Some(text))?
        }
        (None, None) => Value::Null,
    };
    event(ctx, payload)
}

/// A structured-mode body.
///
/// # Errors
/// A [`CloudEventError`]: not JSON, or an attribute at fault.
pub fn from_structured(body: &[u8]) -> Result<Event, CloudEventError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| bad("(event)", format!("not JSON: {e}")))?;
    from_json(&value)
}

/// A batched body (`application/cloudevents-batch+json`): a JSON array of
/// structured CloudEvents. All or nothing: the first bad one refuses the batch.
///
/// # Errors
/// A [`CloudEventError`] with the index of the event at fault.
pub fn from_batch(body: &[u8]) -> Result<Vec<Event>, CloudEventError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| bad("(batch)", format!("not JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(bad("(batch)", "a batch is a JSON array of CloudEvents"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            from_json(item).map_err(|mut e| {
                e.index = Some(i);
                e
            })
        })
        .collect()
}

/// A binary-mode request: the attributes in `ce-*` headers (names compared
/// without case; values percent-decoded, then read as UTF-8, as the HTTP
/// binding says), the content type in `content_type`, the data in `body`.
///
/// ```
/// let headers = [
///     ("ce-specversion", &b"1.0"[..]),
///     ("ce-id", b"a-1"),
///     ("ce-source", b"/agents/caf%C3%A9"),
///     ("ce-type", b"tool.called"),
/// ];
/// let event = plugbus::cloudevents::from_binary(headers, Some("application/json"), b"{}")?;
/// assert_eq!(event.source(), "/agents/café");
/// # Ok::<(), plugbus::cloudevents::CloudEventError>(())
/// ```
///
/// # Errors
/// A [`CloudEventError`] naming the attribute (or `data`) at fault: a
/// value that is not UTF-8 once decoded included.
pub fn from_binary<'h>(
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, CloudEventError> {
    let mut attributes = Map::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if let Some(attribute) = lower.strip_prefix("ce-") {
            check_name(attribute)?;
            let text = percent_encoding::percent_decode(value)
                .decode_utf8()
                .map_err(|e| bad(attribute, format!("not UTF-8 text once percent-decoded: {e}")))?;
            attributes.insert(attribute.to_owned(), Value::String(text.into_owned()));
        }
    }
    if attributes.contains_key("data_base64") {
        return Err(bad("data_base64", "not a header: in binary mode the body is the data"));
    }
    let payload = payload_from_bytes("data", content_type, body, None)?;
    attributes.insert("data".into(), payload);
    from_json(&Value::Object(attributes))
}

/// `event` as a structured-mode CloudEvent: the mapping above, reversed
/// (`datacontenttype` is `application/json`; the plugbus sequence number
/// and cascade depth go in the `plugbusseq` and `plugbusdepth` extensions).
pub fn to_json(event: &Event) -> Value {
    // Values only: writing them into a `Value` cannot fail.
    serde_json::to_value(Structured::of(event, event.payload())).unwrap_or(Value::Null)
}

/// [`to_json`] written as JSON text, on one line: the same document, its
/// `data` the payload's text as it is ([`Event::payload_out`]), so an event
/// read as text is not parsed to be written.
///
/// ```
/// let event = plugbus::Event::new("tool.called", serde_json::json!({"tool": "search"}));
/// let text = plugbus::cloudevents::to_text(&event);
/// let back: serde_json::Value = serde_json::from_str(&text).unwrap();
/// assert_eq!(back, plugbus::cloudevents::to_json(&event));
/// ```
pub fn to_text(event: &Event) -> String {
    // Strings, numbers and JSON text: writing them cannot fail.
    serde_json::to_string(&Structured::of(event, event.payload_out())).unwrap_or_default()
}

/// A structured-mode CloudEvent borrowed from an event, its attributes in
/// name order (as a `Value`'s map writes them).
#[derive(serde::Serialize)]
struct Structured<'a, D> {
    #[serde(skip_serializing_if = "Option::is_none")]
    correlationid: Option<&'a str>,
    data: D,
    datacontenttype: &'static str,
    id: &'a str,
    plugbusdepth: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugbusseq: Option<u64>,
    source: &'a str,
    specversion: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(rename = "type")]
    kind: &'a str,
}

impl<'a, D: serde::Serialize> Structured<'a, D> {
    fn of(event: &'a Event, data: D) -> Structured<'a, D> {
        let time = i128::from(event.time_unix_nanos());
        let time = time::OffsetDateTime::from_unix_timestamp_nanos(time)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
        Structured {
            correlationid: event.correlation_id(),
            data,
            datacontenttype: "application/json",
            id: event.id(),
            plugbusdepth: event.depth(),
            plugbusseq: event.seq(),
            source: event.source(),
            specversion: "1.0",
            time,
            kind: event.name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ce(extra: Value) -> Value {
        let mut v = json!({"specversion": "1.0", "id": "a-1", "source": "/agents/7", "type": "tool.called"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn structured_events_map_onto_plugbus_events() {
        let e = from_json(&ce(json!({
            "time": "2026-12-02T01:00:00.5+01:00",
            "correlationid": "run-42",
            "data": {"tool": "search"},
            "subject": "ignored"
        })))
        .unwrap();
        assert_eq!((e.name(), e.id(), e.source()), ("tool.called", "a-1", "/agents/7"));
        assert_eq!(e.correlation_id(), Some("run-42"));
        assert_eq!(e.payload(), &json!({"tool": "search"}));
        assert_eq!(e.time_unix_nanos(), 1_796_169_600_500_000_000);
        let back = to_json(&e);
        assert_eq!(back["time"], "2026-12-02T00:00:00.5Z");
        assert_eq!(from_json(&back).unwrap().payload(), e.payload());
    }

    #[test]
    fn data_base64_follows_the_content_type() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let e = from_json(&ce(json!({"data_base64": b64(r#"{"n": 1}"#)}))).unwrap();
        assert_eq!(e.payload(), &json!({"n": 1}));
        let e = from_json(&ce(
            json!({"data_base64": b64("héllo"), "datacontenttype": "text/plain"}),
        ))
        .unwrap();
        assert_eq!(e.payload(), &json!("héllo"));
        let e = from_json(&ce(
            json!({"data_base64": "AAEC", "datacontenttype": "application/octet-stream"}),
        ))
        .unwrap();
        assert_eq!(e.payload(), &json!("AAEC"));
    }

    #[test]
    fn errors_name_the_attribute() {
        let attr = |v: Value| from_json(&v).unwrap_err().attribute;
        assert_eq!(attr(json!({"id": "x", "source": "s", "type": "t"})), "specversion");
        assert_eq!(attr(ce(json!({"specversion": "0.3"}))), "specversion");
        assert_eq!(attr(json!({"specversion": "1.0", "source": "s", "type": "t"})), "id");
        assert_eq!(attr(ce(json!({"source": ""}))), "source");
        assert_eq!(attr(ce(json!({"type": "a..b"}))), "type");
        assert_eq!(attr(ce(json!({"time": "yesterday"}))), "time");
        // Past what 64 bits of nanoseconds hold: said so (it read "before 1970").
        let far = from_json(&ce(json!({"time": "9999-12-31T23:59:59Z"}))).unwrap_err();
        assert!(far.to_string().contains("after 2554-07-21"), "{far}");
        let early = from_json(&ce(json!({"time": "1969-12-31T23:59:59Z"}))).unwrap_err();
        assert!(early.to_string().contains("before 1970"), "{early}");
        assert_eq!(attr(ce(json!({"data": 1, "data_base64": "AA=="}))), "data_base64");
        assert_eq!(attr(ce(json!({"data_base64": "!!"}))), "data_base64");
        assert_eq!(attr(ce(json!({"Bad-Name": 1}))), "Bad-Name");
        assert_eq!(attr(ce(json!({"id": 7}))), "id");
        // A line break in an id once passed, and broke every stream it was
        // exported to (`GET /events/stream`).
        assert_eq!(attr(ce(json!({"id": "a\nb"}))), "id");
        assert_eq!(attr(ce(json!({"source": "s\r"}))), "source");
        assert_eq!(attr(ce(json!({"correlationid": "r".repeat(257)}))), "correlationid");
        let batch = from_batch(br#"[{"specversion":"1.0","id":"1","source":"s","type":"ok"}, {"specversion":"1.0"}]"#);
        let e = batch.unwrap_err();
        assert_eq!((e.index, e.attribute.as_str()), (Some(1), "id"));
        assert!(e.to_string().starts_with("event 1: CloudEvent attribute `id`"), "{e}");
    }

    #[test]
    fn binary_mode_reads_headers_and_body() {
        let headers: [(&str, &[u8]); 6] = [
            ("ce-specversion", b"1.0"),
            ("CE-ID", b"b-1"),
            ("ce-source", b"/x"),
            ("ce-type", b"model_responded"),
            ("ce-correlationid", b"run%2D1"),
            ("host", b"ignored"),
        ];
        let e = from_binary(headers, Some("application/json"), br#"{"usage": {}}"#).unwrap();
        assert_eq!(
            (e.name(), e.id(), e.correlation_id()),
            ("model_responded", "b-1", Some("run-1"))
        );
        assert_eq!(e.payload(), &json!({"usage": {}}));
        let err = from_binary(headers, Some("application/json"), b"{oops").unwrap_err();
        assert_eq!(err.attribute, "data");
        let e = from_binary(headers, Some("text/plain; charset=utf-8"), b"hi").unwrap();
        assert_eq!(e.payload(), &json!("hi"));
        // A value that is not UTF-8 (raw, or once decoded) is named.
        for bad_value in [&b"run-\xfe"[..], b"run-%FE"] {
            let mut headers = headers;
            headers[4].1 = bad_value;
            let err = from_binary(headers, Some("application/json"), b"{}").unwrap_err();
            assert_eq!(err.attribute, "correlationid", "{err}");
            assert!(err.reason.contains("not UTF-8"), "{err}");
        }
    }

    #[test]
    fn the_text_form_writes_a_text_payload_as_it_is_and_reads_back_as_the_value_form() {
        let event = Event::decoded(
            9,
            "tool.called".into(),
            "t-1".into(),
            1_700_000_000_000_000_000,
            Some("run-1".into()),
            "nats".into(),
            1,
            r#"{"tool": "search", "args": [1, 2]}"#.into(),
        );
        let text = to_text(&event);
        assert!(text.contains(r#""data":{"tool": "search", "args": [1, 2]}"#), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, to_json(&event));
        assert_eq!(back["plugbusseq"], 9);
        assert_eq!(back["correlationid"], "run-1");
    }
}
