//! OTLP JSON as exporters write it: the proto3 JSON forms the generated
//! serde types of `opentelemetry-proto` do not take, rewritten into forms
//! they do, so that a valid request is not refused whole.
//!
//! proto3 JSON lets an encoder leave out an empty repeated field (Python's
//! `json_format.MessageToJson` writes an empty list attribute as
//! `{"arrayValue": {}}`), write `null` for a default value, write 32-bit
//! integers as strings and non-finite doubles as `"NaN"`, `"Infinity"`,
//! `"-Infinity"`. The direct decode is tried first: only a request it refuses
//! pays for this rewrite.

use serde_json::{Map, Value};

/// Integer fields of a trace request that proto3 JSON may send as strings,
/// and the generated types read only as numbers (64-bit ones already take
/// both).
const INT32_FIELDS: [&str; 6] = [
    "droppedAttributesCount",
    "droppedEventsCount",
    "droppedLinksCount",
    "flags",
    "kind",
    "code",
];

/// Reads an OTLP JSON body into `T`, accepting the proto3 JSON forms listed
/// in the module doc.
///
/// # Errors
/// The direct decode's error when the rewritten body does not decode either
/// (it names the place in the body as sent).
pub(crate) fn from_slice<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    // A request is a JSON object. Serde would also read a struct from an
    // array (`[]` an empty request, `[[...]]` its fields by position),
    // which no OTLP exporter sends.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(serde::de::Error::custom("an OTLP JSON request is a JSON object"));
    }
    let first = match serde_json::from_slice(body) {
        Ok(request) => return Ok(request),
        Err(e) => e,
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        return Err(first);
    };
    normalize(&mut value);
    serde_json::from_value(value).map_err(|_| first)
}

/// Rewrites proto3 JSON's lenient forms in place (see the module doc).
fn normalize(value: &mut Value) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::Object(map) => {
            // `null` means the default: the member is as good as absent.
            map.retain(|_, v| !v.is_null());
            for key in ["arrayValue", "kvlistValue"] {
                if let Some(Value::Object(list)) = map.get_mut(key) {
                    list.entry("values").or_insert_with(|| Value::Array(Vec::new()));
                }
            }
            number_fields(map);
            map.values_mut().for_each(normalize);
        }
        _ => {}
    }
}

/// 32-bit integers and doubles written as strings become numbers; a
/// non-finite double (JSON has no number for it) leaves its value unset.
fn number_fields(map: &mut Map<String, Value>) {
    for key in INT32_FIELDS {
        if let Some(Value::String(text)) = map.get(key)
            && let Ok(n) = text.parse::<i64>()
        {
            map.insert(key.to_owned(), Value::from(n));
        }
    }
    if let Some(Value::String(text)) = map.get("doubleValue") {
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => {
                map.insert("doubleValue".to_owned(), Value::from(x));
            }
            _ => {
                map.remove("doubleValue");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;

    use super::*;

    fn request(attributes: &str, span_extra: &str) -> String {
        format!(
            r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{
                "traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708",
                "name":"chat m","kind":3{span_extra},
                "attributes":{attributes}}}]}}]}}]}}"#
        )
    }

    fn attributes(body: &str) -> Vec<(String, Option<Any>)> {
        let r: ExportTraceServiceRequest = from_slice(body.as_bytes()).unwrap();
        r.resource_spans[0].scope_spans[0].spans[0]
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
            .collect()
    }

    #[test]
    fn an_empty_list_attribute_is_an_empty_list() {
        let body = request(
            r#"[{"key":"gen_ai.response.finish_reasons","value":{"arrayValue":{}}},
                {"key":"m","value":{"kvlistValue":{}}}]"#,
            "",
        );
        // What the generated types alone make of it: the whole request refused.
        assert!(serde_json::from_str::<ExportTraceServiceRequest>(&body).is_err());
        let got = attributes(&body);
        assert!(
            matches!(&got[0].1, Some(Any::ArrayValue(a)) if a.values.is_empty()),
            "{got:?}"
        );
        assert!(
            matches!(&got[1].1, Some(Any::KvlistValue(l)) if l.values.is_empty()),
            "{got:?}"
        );
    }

    #[test]
    fn nulls_strings_for_numbers_and_non_finite_doubles_are_read_as_proto3_json_says() {
        let body = request(
            r#"[{"key":"a","value":{"doubleValue":"NaN"}},
                {"key":"b","value":{"doubleValue":"2.5"}},
                {"key":"c","value":{"intValue":"7"}}]"#,
            r#","droppedAttributesCount":"3","events":null,"status":{"code":"2"}"#,
        );
        assert!(serde_json::from_str::<ExportTraceServiceRequest>(&body).is_err());
        let r: ExportTraceServiceRequest = from_slice(body.as_bytes()).unwrap();
        let span = &r.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.dropped_attributes_count, 3);
        assert_eq!(span.status.as_ref().map(|s| s.code), Some(2));
        let got = attributes(&body);
        assert_eq!(got[0].1, None, "a NaN double leaves the value unset");
        assert_eq!(got[1].1, Some(Any::DoubleValue(2.5)));
        assert_eq!(got[2].1, Some(Any::IntValue(7)));
    }

    #[test]
    fn a_body_that_is_not_otlp_keeps_the_first_error() {
        let e = from_slice::<ExportTraceServiceRequest>(br#"{"resourceSpans": 5}"#).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(from_slice::<ExportTraceServiceRequest>(b"not json").is_err());
        for body in [&b"[]"[..], b" [[]]", b"null", b"5", b""] {
            let e = from_slice::<ExportTraceServiceRequest>(body).unwrap_err();
            assert!(e.to_string().contains("JSON object"), "{e}");
        }
    }
}
