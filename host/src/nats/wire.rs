//! The wire format on JetStream: subjects, partitions and the JSON envelope
//! (documented for other languages in docs/scale-out.md).
//!
//! - Subject: `plugbus.events.<partition>.<event name>`, the name's segments
//!   kept as subject tokens, each character outside `A-Z a-z 0-9 _ -` made
//!   `_` (so `*`, `>` and other specials never reach a subject). The
//!   envelope keeps the real name; the subject only routes.
//! - Partition: FNV-1a (64-bit) of the correlation id's UTF-8 bytes, modulo
//!   the partition count; of the event id when there is no correlation id.
//! - Headers: `Nats-Msg-Id` is the event id (the server drops a repeat within
//!   the stream's duplicate window).
//! - Body: `{"name", "id", "time_unix_nanos", "correlation_id", "source",
//!   "payload", "depth"}`; `depth` (the follow-up depth) may be absent (0).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::Event;

/// The subject prefix of every event.
pub const SUBJECT_PREFIX: &str = "plugbus.events";

/// 64-bit FNV-1a: stable across processes, machines and languages (unlike
/// Rust's seeded hashers), and a dozen lines in any of them.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The partition of `event` among `partitions` (at least 1).
pub fn partition_of(event: &Event, partitions: u32) -> u32 {
    let key = event.correlation_id().unwrap_or(event.id());
    (fnv1a(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// `name` as subject tokens: segments kept, unsafe characters made `_`.
pub fn subject_tokens(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == '.' || c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The subject `event` is published on.
pub fn subject_for(event: &Event, partitions: u32) -> String {
    format!(
        "{SUBJECT_PREFIX}.{}.{}",
        partition_of(event, partitions),
        subject_tokens(event.name())
    )
}

/// Whether `subject` is one event `name` is published on (any partition).
///
/// # Errors
/// What the subject and the name say, when they disagree.
pub fn check_subject(subject: &str, name: &str) -> Result<(), String> {
    let tokens = subject
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .and_then(|rest| rest.split_once('.'))
        .map(|(_, tokens)| tokens);
    let expected = subject_tokens(name);
    if tokens == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "its subject `{subject}` is not that of the event it holds, `{name}` (expected `{SUBJECT_PREFIX}.<partition>.{expected}`)"
        ))
    }
}

/// The subject filter for events matching plugbus pattern `pattern`, in
/// any partition: `*` stays one token, a final `**` becomes `>`, literal
/// segments are made tokens as names are.
pub fn filter_for(pattern: &str) -> String {
    filter_in(Some(pattern), None)
}

/// The subject filter of a consumer: events matching `pattern` (every event
/// when `None`), in `partition` (every partition when `None`).
pub fn filter_in(pattern: Option<&str>, partition: Option<u32>) -> String {
    let partition = partition.map_or_else(|| "*".to_owned(), |p| p.to_string());
    let Some(pattern) = pattern.filter(|p| *p != "*" && *p != "**") else {
        return format!("{SUBJECT_PREFIX}.{partition}.>");
    };
    let tokens: Vec<String> = pattern
        .split('.')
        .map(|segment| match segment {
            "*" => "*".to_owned(),
            "**" => ">".to_owned(),
            literal => subject_tokens(literal),
        })
        .collect();
    format!("{SUBJECT_PREFIX}.{partition}.{}", tokens.join("."))
}

/// The envelope as written: the payload goes in as the text plugins get
/// (serialised once per event), never through a `Value` tree.
#[derive(Serialize)]
struct Outgoing<'a> {
    name: &'a str,
    id: &'a str,
    time_unix_nanos: u64,
    correlation_id: Option<&'a str>,
    source: &'a str,
    payload: &'a RawValue,
    #[serde(skip_serializing_if = "is_zero")]
    depth: u8,
}

fn is_zero(depth: &u8) -> bool {
    *depth == 0
}

/// The envelope's JSON body.
pub fn encode(event: &Event) -> Vec<u8> {
    // The payload text is a `Value` written out: valid JSON.
    let payload = serde_json::from_str::<&RawValue>(event.payload_json()).ok();
    let null = RawValue::NULL;
    let body = Outgoing {
        name: event.name(),
        id: event.id(),
        time_unix_nanos: event.time_unix_nanos(),
        correlation_id: event.correlation_id(),
        source: event.source(),
        payload: payload.unwrap_or(null),
        depth: event.depth(),
    };
    // Strings, numbers and raw JSON: writing them cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The envelope as read. The payload stays text: it is checked as JSON
/// here, handed to plugins as it is, and parsed only if something asks for
/// its value (a native handler, a dead letter).
#[derive(Deserialize)]
struct Envelope {
    name: String,
    id: String,
    time_unix_nanos: Option<u64>,
    correlation_id: Option<String>,
    source: Option<String>,
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    depth: u8,
}

/// An event from an envelope, numbered `seq` (its stream sequence).
///
/// # Errors
/// What is wrong with the body: not JSON, a missing `name` or `id`, or a
/// name plugbus would refuse.
pub fn decode(body: &[u8], seq: u64) -> Result<Event, String> {
    let e: Envelope = serde_json::from_slice(body).map_err(|e| format!("not a plugbus envelope: {e}"))?;
    crate::pattern::validate_event_name(&e.name).map_err(|err| format!("event name: {err}"))?;
    // What plugbus writes always passes; anything else (another client's
    // message) is refused before its id is kept, logged or journaled.
    crate::event::check_external_id(&e.id, crate::event::MAX_ID_BYTES).map_err(|why| format!("`id` {why}"))?;
    let payload = e
        .payload
        .map_or_else(|| "null".to_owned(), |raw| String::from(Box::<str>::from(raw)));
    Ok(Event::decoded(
        seq,
        e.name,
        e.id,
        e.time_unix_nanos.unwrap_or_else(crate::event::now_nanos),
        e.correlation_id,
        e.source.unwrap_or_else(|| "nats".to_owned()),
        e.depth,
        payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fnv1a_is_the_published_function() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn subjects_keep_segments_and_lose_specials() {
        let e = Event::new("tool.called", json!({})).with_correlation_id("run-42");
        let p = partition_of(&e, 8);
        assert_eq!(subject_for(&e, 8), format!("plugbus.events.{p}.tool.called"));
        assert_eq!(p, (fnv1a(b"run-42") % 8) as u32);
        assert_eq!(subject_tokens("a>b.c*d.é"), "a_b.c_d._");
        assert_eq!(filter_for("tool.*"), "plugbus.events.*.tool.*");
        assert_eq!(filter_for("llm.**"), "plugbus.events.*.llm.>");
        assert_eq!(filter_for("**"), "plugbus.events.*.>");
        assert_eq!(filter_for("model_responded"), "plugbus.events.*.model_responded");
        assert_eq!(filter_in(Some("tool.*"), Some(3)), "plugbus.events.3.tool.*");
        assert_eq!(filter_in(None, Some(0)), "plugbus.events.0.>");
        assert!(check_subject(&subject_for(&e, 8), "tool.called").is_ok());
        assert!(check_subject("plugbus.events.3.a_b", "a>b").is_ok());
        let e = check_subject("plugbus.events.0.misbehave.panic", "model_responded").unwrap_err();
        assert!(e.contains("model_responded") && e.contains("misbehave.panic"), "{e}");
        assert!(check_subject("plugbus.events.0", "x").is_err());
    }

    #[test]
    fn envelopes_round_trip_and_bad_ones_are_named() {
        let e = Event::new("tool.called", json!({"tool": "search"})).with_correlation_id("run-1");
        let back = decode(&encode(&e), 7).unwrap();
        assert_eq!(back.id(), e.id());
        assert_eq!(back.name(), "tool.called");
        assert_eq!(back.correlation_id(), Some("run-1"));
        assert_eq!(back.payload(), &json!({"tool": "search"}));
        assert_eq!(back.seq(), Some(7));
        assert!(decode(b"{", 1).unwrap_err().contains("not a plugbus envelope"));
        assert!(decode(br#"{"id": "x"}"#, 1).unwrap_err().contains("name"));
        assert!(
            decode(br#"{"name": "a..b", "id": "x"}"#, 1)
                .unwrap_err()
                .contains("event name")
        );
        let minimal = decode(br#"{"name": "ping", "id": "p-1"}"#, 3).unwrap();
        assert_eq!(minimal.source(), "nats");
        assert_eq!(minimal.payload(), &serde_json::Value::Null);
        assert_eq!(minimal.payload_json(), "null");
        // A payload that is not JSON is refused with the envelope.
        assert!(decode(br#"{"name": "a", "id": "x", "payload": {"k": }}"#, 1).is_err());
        // Another client's message with an id plugbus never makes.
        let huge = format!(
            r#"{{"name": "a", "id": "{}"}}"#,
            "i".repeat(crate::event::MAX_ID_BYTES + 1)
        );
        for body in [
            huge.as_str(),
            r#"{"name": "a", "id": ""}"#,
            r#"{"name": "a", "id": "a\nb"}"#,
        ] {
            let e = decode(body.as_bytes(), 1).unwrap_err();
            assert!(e.starts_with("`id` must"), "{e}");
        }
        // Plugins get the payload text as published; the value is there when asked.
        let spaced = decode(br#"{"name": "a", "id": "x", "payload": {"b": 1, "a": [true]}}"#, 1).unwrap();
        assert_eq!(spaced.payload_json(), r#"{"b": 1, "a": [true]}"#);
        assert_eq!(spaced.payload(), &json!({"a": [true], "b": 1}));
        let copy = spaced.clone().with_correlation_id("c");
        assert_eq!(copy.payload(), &json!({"a": [true], "b": 1}));
        assert_eq!(copy.correlation_id(), Some("c"));
        // Written back, an event's envelope is what `decode` reads.
        let followed = Event::follow_up(&e, "p", 0, "b".into(), json!({"x": "y"}));
        let body: serde_json::Value = serde_json::from_slice(&encode(&followed)).unwrap();
        assert_eq!(body["depth"], 1);
        assert_eq!(body["payload"], json!({"x": "y"}));
        assert_eq!(body["correlation_id"], "run-1");
        let top: serde_json::Value = serde_json::from_slice(&encode(&e)).unwrap();
        assert!(top.get("depth").is_none());
    }
}
