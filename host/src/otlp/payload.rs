//! A mapped event's payload written straight to JSON text: the GenAI
//! mapping knows every field it puts, so it writes the text the plugins and
//! the log receive without first building a `serde_json::Value` tree (whose
//! map nodes and key strings were half of the mapping's cost in scenario 16
//! of `plugbus bench`).
//!
//! Keys must be written in ascending byte order: the text is then exactly
//! what serialising the same fields as a `serde_json::Map` (a `BTreeMap`)
//! gives, so events, logs and replays are byte for byte what they were when
//! the mapping built values. Debug builds check the order.

use serde::Serialize;
use serde_json::Value;

/// A JSON object being written.
///
/// `o.str("model", "gpt-4.1"); o.u64("tokens", 12); o.finish()` gives
/// `{"model":"gpt-4.1","tokens":12}`.
pub(crate) struct JsonObject {
    out: Vec<u8>,
    /// Whether no field was written yet (no `,` before the next).
    empty: bool,
    #[cfg(debug_assertions)]
    last_key: String,
}

/// Bytes reserved up front: a mapped `model_responded` payload is ~500
/// bytes, so one allocation usually holds it.
const INITIAL_CAPACITY: usize = 512;

impl JsonObject {
    /// An empty object.
    pub(crate) fn new() -> JsonObject {
        JsonObject::with_capacity(INITIAL_CAPACITY)
    }

    /// An empty object with room for `bytes` of text.
    fn with_capacity(bytes: usize) -> JsonObject {
        let mut out = Vec::with_capacity(bytes);
        out.push(b'{');
        JsonObject {
            out,
            empty: true,
            #[cfg(debug_assertions)]
            last_key: String::new(),
        }
    }

    /// Whether no field was written.
    pub(crate) fn is_empty(&self) -> bool {
        self.empty
    }

    fn key(&mut self, key: &str) {
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.empty || key > self.last_key.as_str(),
                "JSON keys out of order: `{key}` after `{}`",
                self.last_key
            );
            key.clone_into(&mut self.last_key);
        }
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        write_value(&mut self.out, key);
        self.out.push(b':');
    }

    /// A string field.
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        write_value(&mut self.out, value);
    }

    /// A string field when there is a value.
    pub(crate) fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(value) = value {
            self.str(key, value);
        }
    }

    /// A whole-number field.
    pub(crate) fn u64(&mut self, key: &str, value: u64) {
        self.key(key);
        write_value(&mut self.out, &value);
    }

    /// A whole-number field when there is a value.
    pub(crate) fn opt_u64(&mut self, key: &str, value: Option<u64>) {
        if let Some(value) = value {
            self.u64(key, value);
        }
    }

    /// A number field (finite: the mapping's durations; a non-finite one is
    /// written as `null`, as `serde_json` does).
    pub(crate) fn f64(&mut self, key: &str, value: f64) {
        self.key(key);
        write_value(&mut self.out, &value);
    }

    /// A list of strings when there is one.
    pub(crate) fn opt_strings(&mut self, key: &str, value: Option<&[String]>) {
        if let Some(value) = value {
            self.key(key);
            write_value(&mut self.out, value);
        }
    }

    /// Any JSON value when there is one (content attributes, `--otlp-all`
    /// attributes), serialised compactly.
    pub(crate) fn opt_value(&mut self, key: &str, value: Option<&Value>) {
        if let Some(value) = value {
            self.key(key);
            write_value(&mut self.out, value);
        }
    }

    /// A field holding JSON text already written (an object finished with
    /// [`JsonObject::finish`]).
    pub(crate) fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.out.extend_from_slice(json.as_bytes());
    }

    /// A nested object, written by `fill`; left out when `fill` writes
    /// nothing (as the mapping leaves out an empty `usage`).
    pub(crate) fn object_if_any(&mut self, key: &str, fill: impl FnOnce(&mut JsonObject)) {
        // A nested object here is `usage`: a few counts.
        let mut nested = JsonObject::with_capacity(64);
        fill(&mut nested);
        if !nested.is_empty() {
            self.raw(key, &nested.finish());
        }
    }

    /// The object's text.
    pub(crate) fn finish(mut self) -> String {
        self.out.push(b'}');
        // Every byte written is either ASCII punctuation or `serde_json`'s
        // output, which is UTF-8: the check cannot fail.
        String::from_utf8(self.out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Appends `value`'s compact JSON text. Serialising strings, numbers and
/// `Value`s into a `Vec` cannot fail (their keys are strings).
fn write_value<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Never an error for these types (see above); nothing to report.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_what_a_serialised_map_of_the_same_fields_gives() {
        let mut o = JsonObject::new();
        o.str("a", "quote \" and \\ and \n and é");
        o.opt_str("absent", None);
        o.opt_strings("b", Some(&["stop".to_owned()]));
        o.f64("c", 1.0);
        o.f64("d", 0.25);
        o.object_if_any("e", |_| {});
        o.object_if_any("f", |u| {
            u.u64("x", 3);
            u.opt_u64("y", None);
        });
        o.opt_value("g", Some(&serde_json::json!({"z": [1, null], "a": true})));
        o.u64("h", u64::MAX);
        let text = o.finish();
        let expected = serde_json::json!({
            "a": "quote \" and \\ and \n and é",
            "b": ["stop"],
            "c": 1.0,
            "d": 0.25,
            "f": {"x": 3},
            "g": {"a": true, "z": [1, null]},
            "h": u64::MAX,
        });
        assert_eq!(text, expected.to_string());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "out of order")]
    fn keys_out_of_order_are_caught_in_debug_builds() {
        let mut o = JsonObject::new();
        o.str("b", "");
        o.str("a", "");
    }
}
