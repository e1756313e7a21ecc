//! `plugbus new NAME [--lang rust]`: scaffold a plugin that builds as-is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

/// The Rust template, embedded so the binary works from anywhere.
const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml.tmpl")),
    (
        ".cargo/config.toml",
        include_str!("../../templates/rust/.cargo/config.toml.tmpl"),
    ),
    ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs.tmpl")),
    ("events.jsonl", include_str!("../../templates/rust/events.jsonl.tmpl")),
    ("{{name}}.toml", include_str!("../../templates/rust/manifest.toml.tmpl")),
    ("README.md", include_str!("../../templates/rust/README.md.tmpl")),
    (".gitignore", "/target\n"),
];

/// The guest SDK of the checkout this binary was built from, if it is still there.
fn local_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.join("guest-sdk");
    sdk.join("Cargo.toml")
        .is_file()
        .then(|| sdk.canonicalize().ok())
        .flatten()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 64
}

/// `my-plugin` → `MyPlugin`.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .map(|part| {
            let mut c = part.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

pub fn new(name: &str, dir: Option<&Path>, sdk: Option<&Path>) -> anyhow::Result<ExitCode> {
    if !valid_name(name) {
        bail!(
            "`{name}` is not a valid plugin name: use lowercase letters, digits, `-` and `_`, starting with a letter"
        );
    }
    let root = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(name));
    if root.exists() && root.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", root.display());
    }
    let sdk_dep = match sdk.map(Path::to_path_buf).or_else(local_sdk) {
        Some(path) => format!("{{ path = {:?} }}", path.display().to_string()),
        None => "\"0.1\"".to_owned(),
    };
    let vars = [
        ("{{name}}", name.to_owned()),
        ("{{crate}}", name.replace('-', "_")),
        ("{{type}}", type_name(name)),
        ("{{sdk}}", sdk_dep),
    ];
    let fill = |text: &str| vars.iter().fold(text.to_owned(), |t, (k, v)| t.replace(k, v));
    for (file, template) in RUST {
        let path = root.join(fill(file));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, fill(template)).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("created plugin `{name}` in {}", root.display());
    println!("  cd {} && cargo build --release", root.display());
    println!(
        "  then copy target/wasm32-wasip2/release/{}.wasm into your plugin directory",
        name.replace('-', "_")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("cost-tracker"));
        assert!(!valid_name("Cost"));
        assert!(!valid_name("1x"));
        assert!(!valid_name("a b"));
        assert_eq!(type_name("my-plugin_x"), "MyPluginX");
    }
}
