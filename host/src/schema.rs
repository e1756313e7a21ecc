//! Event schemas checked at emit: a JSON Schema per event name (validated by
//! the `jsonschema` crate), so a shape mismatch is caught at the call site
//! rather than in a handler.
//!
//! Schemas are registered with [`BusBuilder::schema`](crate::BusBuilder::schema)
//! or loaded from a directory of `<event-name>.schema.json` files
//! ([`BusBuilder::schema_dir`](crate::BusBuilder::schema_dir), `--schemas DIR`).
//! An event whose name has no schema is not checked, and a bus without any
//! schema never looks: the emit path pays nothing.
//!
//! What happens to an invalid event:
//! - [`Bus::try_emit`](crate::Bus::try_emit) / [`try_publish`](crate::Bus::try_publish):
//!   a [`SchemaError`] naming the failing path; nothing is published;
//! - plain `emit` / `publish`: by [`SchemaPolicy`]: refused and counted
//!   (default), or delivered with a warning and counted;
//! - a plugin's follow-up: its `host.emit` returns the reason;
//! - `POST /events`: 422 with the path; the request is refused whole.
//!
//! Events replayed from the log are not checked again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::pattern::validate_event_name;

/// What plain `emit` does with an event its schema refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemaPolicy {
    /// Not delivered, counted ([`Bus::schema_rejected`](crate::Bus::schema_rejected)),
    /// logged. The default: a malformed event never reaches a handler.
    #[default]
    Reject,
    /// Delivered anyway, counted and logged.
    Warn,
}

/// An event that does not fit its schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event `{event}` does not fit its schema at `{path}`: {message}")]
pub struct SchemaError {
    /// The event's name.
    pub event: String,
    /// JSON pointer to the failing part of the payload (`""` for the whole).
    pub path: String,
    /// What the schema says is wrong.
    pub message: String,
}

/// A schema that could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("schema {source_name}: {reason}")]
pub struct SchemaLoadError {
    /// The event name, or the file, at fault.
    pub source_name: String,
    /// What is wrong.
    pub reason: String,
}

/// The compiled schemas of a bus, by event name.
pub(crate) struct Schemas {
    by_name: HashMap<String, jsonschema::Validator>,
    pub policy: SchemaPolicy,
    rejected: AtomicU64,
}

/// Compiles `schema` for event `name`.
pub(crate) fn compile(name: &str, schema: &Value) -> Result<jsonschema::Validator, SchemaLoadError> {
    let err = |reason: String| SchemaLoadError {
        source_name: format!("for `{name}`"),
        reason,
    };
    validate_event_name(name).map_err(|e| err(format!("not an event name: {e}")))?;
    jsonschema::validator_for(schema).map_err(|e| err(format!("not a valid JSON Schema: {e}")))
}

/// Reads every `<event-name>.schema.json` of `dir`.
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<(String, Value)>, SchemaLoadError> {
    let err = |path: &Path, reason: String| SchemaLoadError {
        source_name: path.display().to_string(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir, format!("cannot read the directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".schema.json")))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".schema.json"))
                .unwrap_or_default()
                .to_owned();
            let text = std::fs::read_to_string(&path).map_err(|e| err(&path, format!("cannot read: {e}")))?;
            let schema = serde_json::from_str(&text).map_err(|e| err(&path, format!("not JSON: {e}")))?;
            Ok((name, schema))
        })
        .collect()
}

impl Schemas {
    pub fn new(by_name: HashMap<String, jsonschema::Validator>, policy: SchemaPolicy) -> Schemas {
        Schemas {
            by_name,
            policy,
            rejected: AtomicU64::new(0),
        }
    }

    /// Checks a payload against the schema of `name`, if there is one.
    pub fn check(&self, name: &str, payload: &Value) -> Result<(), SchemaError> {
        let Some(validator) = self.by_name.get(name) else {
            return Ok(());
        };
        validator.validate(payload).map_err(|e| SchemaError {
            event: name.to_owned(),
            path: e.instance_path().to_string(),
            message: crate::text::cap(e.to_string()),
        })
    }

    /// Counts an invalid event that plain `emit` met.
    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schemas() -> Schemas {
        let schema = json!({
            "type": "object",
            "required": ["usage"],
            "properties": {"usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer", "minimum": 0}}}}
        });
        let mut by_name = HashMap::new();
        by_name.insert(
            "model_responded".to_owned(),
            compile("model_responded", &schema).unwrap(),
        );
        Schemas::new(by_name, SchemaPolicy::Reject)
    }

    #[test]
    fn errors_name_the_failing_path() {
        let s = schemas();
        assert!(
            s.check("model_responded", &json!({"usage": {"prompt_tokens": 3}}))
                .is_ok()
        );
        assert!(s.check("other", &json!(42)).is_ok(), "no schema, no check");
        let e = s
            .check("model_responded", &json!({"usage": {"prompt_tokens": -1}}))
            .unwrap_err();
        assert_eq!(e.path, "/usage/prompt_tokens");
        let e = s.check("model_responded", &json!({})).unwrap_err();
        assert_eq!(e.path, "");
        assert!(e.message.contains("usage"), "{e}");
    }

    #[test]
    fn bad_schemas_are_refused_with_the_reason() {
        assert!(compile("a..b", &json!({})).is_err());
        let e = compile("x", &json!({"type": 12})).unwrap_err();
        assert!(e.to_string().contains("for `x`"), "{e}");
    }
}
