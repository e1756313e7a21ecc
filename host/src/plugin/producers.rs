//! A plugin's source language, read from what its toolchain left in the
//! component (shown by `plugbus check`, `GET /plugins` and the dashboard;
//! informational only).

use wasmparser::{KnownCustom, Parser, Payload};

/// The language a component was written in, when its toolchain tells:
/// `Rust`, `C`, `Python` or `JavaScript`. `None` when it does not, or the
/// bytes do not parse (the loader reports that separately).
///
/// The interpreted languages are recognised by their runtime, which their
/// modules import from (componentize-py links `libpython3.*.so` and its
/// `componentize_py_runtime`; componentize-qjs its
/// `componentize_qjs_runtime`): the runtime itself is compiled from C and
/// Rust. Otherwise the main module's `producers` section decides: it is the
/// first core module recording a language (wit-component puts the WASI
/// adapter, written in Rust, after it).
pub(crate) fn language(bytes: &[u8]) -> Option<&'static str> {
    let mut first_language: Option<&'static str> = None;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(Payload::ImportSection(imports)) => {
                for import in imports.into_imports().flatten() {
                    if let Some(runtime) = interpreter(import.module) {
                        return Some(runtime);
                    }
                }
            }
            Ok(Payload::CustomSection(section)) if first_language.is_none() => {
                if let KnownCustom::Producers(reader) = section.as_known() {
                    first_language = reader
                        .into_iter()
                        .flatten()
                        .find(|field| field.name == "language")
                        .and_then(|field| field.values.into_iter().flatten().next())
                        .and_then(|value| compiled(value.name));
                }
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    first_language
}

/// The language of an interpreter runtime a module imports from.
fn interpreter(module: &str) -> Option<&'static str> {
    if module.starts_with("libpython") || module.starts_with("componentize_py") {
        Some("Python")
    } else if module.starts_with("componentize_qjs") || module.contains("quickjs") {
        Some("JavaScript")
    } else {
        None
    }
}

/// A `producers` language value (`Rust`, `C99`, `C11`…) as a language.
fn compiled(value: &str) -> Option<&'static str> {
    match value {
        "Rust" => Some("Rust"),
        v if v.starts_with('C') && v[1..].chars().all(|c| c.is_ascii_digit()) => Some("C"),
        v if v.starts_with("C++") => Some("C++"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_wasm_has_no_language() {
        assert_eq!(language(b"not wasm at all"), None);
        assert_eq!(language(b""), None);
    }

    #[test]
    fn producer_and_runtime_names() {
        assert_eq!(compiled("C99"), Some("C"));
        assert_eq!(compiled("C11"), Some("C"));
        assert_eq!(compiled("Rust"), Some("Rust"));
        assert_eq!(compiled("Cobol"), None);
        assert_eq!(interpreter("libpython3.14.so"), Some("Python"));
        assert_eq!(interpreter("componentize_qjs_runtime"), Some("JavaScript"));
        assert_eq!(interpreter("wasi_snapshot_preview1"), None);
    }
}
