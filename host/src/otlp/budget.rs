//! What a request body becomes once decoded, counted before it is decoded:
//! its spans and its elements (every message, string, byte string, object
//! and array the decoder would allocate), so a small body that would
//! decode into gigabytes (eight million empty spans fit in 16 MiB, two
//! bytes each, ~250 bytes each once decoded) is refused before it is.
//!
//! The protobuf count walks the wire format along the messages of an
//! `ExportTraceServiceRequest` (without allocating); the JSON count is an
//! upper bound (every object, array and string, keys included).

use crate::otlp::OtlpError;

/// What a body holds, counted before decoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Spans.
    pub spans: usize,
    /// Elements the decoder would allocate (spans included).
    pub elements: usize,
}

/// Messages of an `ExportTraceServiceRequest` that hold other messages, and
/// where (field number → the message it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Request,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Scope,
    Span,
    SpanEvent,
    Link,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    /// A message whose fields hold no other message (or one not counted
    /// deeper: a status, an entity ref): its fields are counted only.
    Leaf,
}

impl Message {
    /// The message field `field` of this message holds, if it is one.
    fn child(self, field: u64) -> Option<Message> {
        use Message::*;
        Some(match (self, field) {
            (Request, 1) => ResourceSpans,
            (ResourceSpans, 1) => Resource,
            (ResourceSpans, 2) => ScopeSpans,
            (Resource, 1) => KeyValue,
            (Resource, 3) => Leaf,
            (ScopeSpans, 1) => Scope,
            (ScopeSpans, 2) => Span,
            (Scope, 3) => KeyValue,
            (Span, 9) => KeyValue,
            (Span, 11) => SpanEvent,
            (Span, 13) => Link,
            (Span, 15) => Leaf,
            (SpanEvent, 3) => KeyValue,
            (Link, 4) => KeyValue,
            (KeyValue, 2) => AnyValue,
            (AnyValue, 5) => ArrayValue,
            (AnyValue, 6) => KeyValueList,
            (ArrayValue, 1) => AnyValue,
            (KeyValueList, 1) => KeyValue,
            _ => return None,
        })
    }
}

/// Nesting deeper than prost decodes (its recursion limit is 100).
const MAX_DEPTH: usize = 100;

/// Counts the spans and elements of a protobuf `ExportTraceServiceRequest`.
/// An element takes at least two bytes on the wire (a tag and a length), so
/// a body of at most `2 × max_elements` bytes cannot hold too many: then
/// only the spans are counted (the walk skips over each span whole), which
/// costs next to nothing; `elements` is then a bound, not a count.
///
/// # Errors
/// [`OtlpError::Malformed`] for a body that is not protobuf (which the
/// decoder would refuse too).
pub fn protobuf(body: &[u8], max_elements: usize) -> Result<Counts, OtlpError> {
    let mut counts = Counts::default();
    let deep = body.len() / 2 > max_elements;
    walk(body, Message::Request, 0, &mut counts, deep)?;
    if !deep {
        counts.elements = body.len() / 2;
    }
    Ok(counts)
}

fn malformed(why: &str) -> OtlpError {
    OtlpError::Malformed(format!("not an ExportTraceServiceRequest: {why}"))
}

fn varint(buf: &mut &[u8]) -> Result<u64, OtlpError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or_else(|| malformed("a varint is cut short"))?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("a varint is longer than ten bytes"))
}

fn skip(buf: &mut &[u8], n: usize) -> Result<(), OtlpError> {
    if buf.len() < n {
        return Err(malformed("a field runs past the end of its message"));
    }
    *buf = &buf[n..];
    Ok(())
}

fn walk(mut buf: &[u8], message: Message, depth: usize, counts: &mut Counts, deep: bool) -> Result<(), OtlpError> {
    if depth > MAX_DEPTH {
        return Err(malformed("messages nested too deep"));
    }
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut buf)?;
            }
            1 => skip(&mut buf, 8)?,
            5 => skip(&mut buf, 4)?,
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| malformed("a length past memory"))?;
                if buf.len() < len {
                    return Err(malformed("a field runs past the end of its message"));
                }
                let (inner, rest) = buf.split_at(len);
                buf = rest;
                counts.elements += 1;
                if let Some(child) = message.child(field) {
                    if child == Message::Span {
                        counts.spans += 1;
                        if !deep {
                            continue;
                        }
                    }
                    walk(inner, child, depth + 1, counts, deep)?;
                }
            }
            _ => return Err(malformed("a group or an unknown wire type")),
        }
    }
    Ok(())
}

/// An upper bound on the elements of an OTLP JSON body: every object,
/// array and string (keys included); spans are not told apart (the decoded
/// request's count is checked after).
pub fn json(body: &[u8]) -> Counts {
    let mut elements = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    elements += 1;
                }
                b'{' | b'[' => elements += 1,
                _ => {}
            }
        }
    }
    Counts { spans: 0, elements }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;

    fn attr(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn the_protobuf_count_finds_every_span_and_nested_value() {
        let span = Span {
            name: "chat".into(),
            attributes: vec![
                attr("a", any_value::Value::StringValue("x".into())),
                attr(
                    "b",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::IntValue(1)),
                        }],
                    }),
                ),
            ],
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span.clone(), span.clone(), Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let body = request.encode_to_vec();
        let shallow = protobuf(&body, usize::MAX).unwrap();
        assert_eq!(
            (shallow.spans, shallow.elements),
            (3, body.len() / 2),
            "spans only, elements bounded"
        );
        let counts = protobuf(&body, 0).unwrap();
        assert_eq!(counts.spans, 3);
        // The resource spans, the scope spans and 3 spans; in each full span
        // 10: its name, two key-values (4 each: the pair, its key, its value,
        // what the value holds: a string, an array) and the array's value.
        assert_eq!(counts.elements, 1 + 1 + 3 + 2 * 10, "{counts:?}");
        assert!(protobuf(&[0x0a, 0x05, 0x12], 0).is_err(), "a field past the end");
        assert!(protobuf(&[0x0b], 0).is_err(), "a group");
        assert_eq!(protobuf(&[], 0).unwrap(), Counts::default());
    }

    #[test]
    fn the_json_count_bounds_objects_arrays_and_strings() {
        let counts = json(br#"{"a":[{},"x\"{",{"b":"}"}]}"#);
        // Objects 3, arrays 1, strings "a", "x\"{", "b", "}".
        assert_eq!(counts.elements, 3 + 1 + 4);
    }
}
