//! OTLP attribute values as JSON, and typed lookups in a span's attributes
//! that tell a missing attribute from one of the wrong type.

use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value as Any};
use serde_json::{Map, Value};

/// Largest token count taken: JSON numbers stay exact up to 2^53, and no
/// real request comes near it; a larger one is a producer's bug.
pub const MAX_TOKENS: u64 = 1 << 53;

/// How deep nested array and key-value list values are followed; deeper
/// levels become `null`. OTLP bodies are bounded, but nesting is not, and a
/// recursive conversion must not overflow the stack on a hostile body.
const MAX_DEPTH: usize = 32;

/// An attribute value as JSON: strings, booleans, numbers, arrays and
/// key-value lists as they are; bytes as base64 text; a non-finite double
/// (which JSON cannot hold) as its text (`"NaN"`, `"inf"`).
pub fn to_json(value: &AnyValue) -> Value {
    any_to_json(value.value.as_ref(), 0)
}

fn any_to_json(value: Option<&Any>, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    match value {
        None => Value::Null,
        Some(Any::StringValue(s)) => Value::String(s.clone()),
        Some(Any::BoolValue(b)) => Value::Bool(*b),
        Some(Any::IntValue(i)) => Value::from(*i),
        Some(Any::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or_else(|| Value::String(d.to_string()), Value::Number)
        }
        Some(Any::BytesValue(b)) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        // An index into a profiles string table: nothing to resolve it in a trace.
        Some(Any::StringValueStrindex(_)) => Value::Null,
        Some(Any::ArrayValue(a)) => Value::Array(
            a.values
                .iter()
                .map(|v| any_to_json(v.value.as_ref(), depth + 1))
                .collect(),
        ),
        Some(Any::KvlistValue(kv)) => Value::Object(
            kv.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        any_to_json(kv.value.as_ref().and_then(|v| v.value.as_ref()), depth + 1),
                    )
                })
                .collect::<Map<String, Value>>(),
        ),
    }
}

/// A span's (or resource's) attributes, looked up by key. The last value
/// of a repeated key wins, as in the OTel SDKs.
#[derive(Clone, Copy)]
pub struct Attributes<'a>(pub &'a [KeyValue]);

/// An attribute present with a value of the wrong type or out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The attribute's key.
    pub key: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl<'a> Attributes<'a> {
    fn get(&self, key: &str) -> Option<&'a Any> {
        self.0
            .iter()
            .rev()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    /// Whether the key is present at all.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A string attribute; a present value of another type is `Err`.
    pub fn str(&self, key: &'static str) -> Result<Option<&'a str>, Invalid> {
        match self.get(key) {
            None => Ok(None),
            Some(Any::StringValue(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(Invalid {
                key,
                reason: format!("expected a string, got {}", kind(other)),
            }),
        }
    }

    /// A name or id: a string, where an empty one counts as absent (some
    /// instrumentations send `""` for "none": pydantic-ai's conversation id).
    ///
    /// # Errors
    /// As for [`str`](Self::str).
    pub fn name(&self, key: &'static str) -> Result<Option<&'a str>, Invalid> {
        Ok(self.str(key)?.filter(|s| !s.is_empty()))
    }

    /// An id naming something outside (a conversation): a [`name`](Self::name)
    /// that is also 1 to `max` bytes with no control characters, as every id
    /// taken from outside is ([`crate::check_external_id`]).
    pub fn id(&self, key: &'static str, max: usize) -> Result<Option<&'a str>, Invalid> {
        match self.name(key)? {
            None => Ok(None),
            Some(id) => crate::event::check_external_id(id, max)
                .map(|()| Some(id))
                .map_err(|reason| Invalid { key, reason }),
        }
    }

    /// A token count: a whole number from 0 to 2^53 (an int, or a double
    /// holding a whole number, as some SDKs send). Anything else is `Err`.
    pub fn tokens(&self, key: &'static str) -> Result<Option<u64>, Invalid> {
        let invalid = |reason: String| Invalid { key, reason };
        match self.get(key) {
            None => Ok(None),
            Some(Any::IntValue(i)) => u64::try_from(*i)
                .ok()
                .filter(|n| *n <= MAX_TOKENS)
                .map(Some)
                .ok_or_else(|| invalid(format!("{i} is not a token count from 0 to 2^53"))),
            Some(Any::DoubleValue(d)) if d.fract() == 0.0 && (0.0..=MAX_TOKENS as f64).contains(d) => {
                Ok(Some(*d as u64))
            }
            Some(Any::DoubleValue(d)) => Err(invalid(format!("{d} is not a token count from 0 to 2^53"))),
            Some(other) => Err(invalid(format!("expected an integer, got {}", kind(other)))),
        }
    }

    /// A list of strings (a single string is taken as a list of one).
    pub fn strings(&self, key: &'static str) -> Result<Option<Vec<String>>, Invalid> {
        match self.get(key) {
            None => Ok(None),
            Some(Any::StringValue(s)) => Ok(Some(vec![s.clone()])),
            Some(Any::ArrayValue(a)) => a
                .values
                .iter()
                .map(|v| match &v.value {
                    Some(Any::StringValue(s)) => Ok(s.clone()),
                    Some(other) => Err(Invalid {
                        key,
                        reason: format!("expected strings in the list, got {}", kind(other)),
                    }),
                    None => Err(Invalid {
                        key,
                        reason: "an empty value in the list".into(),
                    }),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(Invalid {
                key,
                reason: format!("expected a list of strings, got {}", kind(other)),
            }),
        }
    }

    /// A content attribute (messages, tool arguments or results): a string
    /// holding JSON is that JSON, any other string is text, and structured
    /// values are converted as they are.
    pub fn content(&self, key: &str) -> Option<Value> {
        match self.get(key)? {
            Any::StringValue(s) => {
                let trimmed = s.trim_start();
                if (trimmed.starts_with('{') || trimmed.starts_with('['))
                    && let Ok(v) = serde_json::from_str(s)
                {
                    return Some(v);
                }
                Some(Value::String(s.clone()))
            }
            other => Some(any_to_json(Some(other), 0)),
        }
    }

    /// Every attribute as one JSON object (for `otel.span` events).
    pub fn to_object(&self) -> Map<String, Value> {
        self.0
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.as_ref().map_or(Value::Null, to_json)))
            .collect()
    }
}

fn kind(value: &Any) -> &'static str {
    match value {
        Any::StringValue(_) => "a string",
        Any::BoolValue(_) => "a boolean",
        Any::IntValue(_) => "an integer",
        Any::DoubleValue(_) => "a double",
        Any::ArrayValue(_) => "a list",
        Any::KvlistValue(_) => "a key-value list",
        Any::BytesValue(_) => "bytes",
        Any::StringValueStrindex(_) => "a string-table index",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An attribute, for tests that build spans.
    pub(crate) fn kv(key: &str, value: Any) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn token_counts_must_be_whole_and_in_range() {
        let attrs = [
            kv("ok", Any::IntValue(12)),
            kv("neg", Any::IntValue(-1)),
            kv("huge", Any::IntValue(1 << 60)),
            kv("whole", Any::DoubleValue(3.0)),
            kv("frac", Any::DoubleValue(3.5)),
            kv("text", Any::StringValue("12".into())),
        ];
        let a = Attributes(&attrs);
        assert_eq!(a.tokens("ok"), Ok(Some(12)));
        assert_eq!(a.tokens("missing"), Ok(None));
        assert_eq!(a.tokens("whole"), Ok(Some(3)));
        for key in ["neg", "huge", "frac", "text"] {
            let key: &'static str = Box::leak(key.to_owned().into_boxed_str());
            assert!(a.tokens(key).is_err(), "{key} is refused");
        }
    }

    #[test]
    fn content_holding_json_is_json_and_other_text_is_text() {
        let attrs = [
            kv("json", Any::StringValue(r#"{"city": "Paris"}"#.into())),
            kv("text", Any::StringValue("{not json".into())),
        ];
        let a = Attributes(&attrs);
        assert_eq!(a.content("json"), Some(serde_json::json!({"city": "Paris"})));
        assert_eq!(a.content("text"), Some(Value::String("{not json".into())));
    }

    #[test]
    fn deep_nesting_is_cut_rather_than_overflowing_the_stack() {
        let mut value = Any::IntValue(1);
        for _ in 0..1_000 {
            value = Any::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                values: vec![AnyValue { value: Some(value) }],
            });
        }
        let json = to_json(&AnyValue { value: Some(value) });
        let mut depth = 0;
        let mut at = &json;
        while let Value::Array(a) = at {
            depth += 1;
            at = &a[0];
        }
        assert_eq!(depth, MAX_DEPTH + 1);
        assert_eq!(*at, Value::Null);
    }
}
