//! `plugbus new NAME [--lang rust|c|python|js]`: scaffold a plugin that builds as-is.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::Lang;

/// A template: (file name, contents); both may hold `{{name}}`, `{{crate}}`,
/// `{{type}}` and (Rust) `{{sdk}}`. Embedded, so the binary works from anywhere.
type Template = &'static [(&'static str, &'static str)];

const EVENTS: &str = include_str!("../../templates/events.jsonl.tmpl");

const RUST: Template = &[
    ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml.tmpl")),
    (
        ".cargo/config.toml",
        include_str!("../../templates/rust/.cargo/config.toml.tmpl"),
    ),
    ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs.tmpl")),
    ("events.jsonl", EVENTS),
    ("{{name}}.toml", include_str!("../../templates/rust/manifest.toml.tmpl")),
    ("README.md", include_str!("../../templates/rust/README.md.tmpl")),
    (".gitignore", "/target\n"),
];

const C: Template = &[
    ("{{crate}}.c", include_str!("../../templates/c/plugin.c.tmpl")),
    ("Makefile", include_str!("../../templates/c/Makefile.tmpl")),
    ("events.jsonl", EVENTS),
    ("{{name}}.toml", include_str!("../../templates/c/manifest.toml.tmpl")),
    ("README.md", include_str!("../../templates/c/README.md.tmpl")),
    (".gitignore", "/build\n/*.wasm\n"),
];

const PYTHON: Template = &[
    ("{{crate}}.py", include_str!("../../templates/python/plugin.py.tmpl")),
    ("Makefile", include_str!("../../templates/python/Makefile.tmpl")),
    // The same pinned, hash-checked componentize-py the repository builds with.
    (
        "requirements.txt",
        include_str!("../../../plugins/toolchain/requirements.txt"),
    ),
    ("events.jsonl", EVENTS),
    (
        "{{name}}.toml",
        include_str!("../../templates/python/manifest.toml.tmpl"),
    ),
    ("README.md", include_str!("../../templates/python/README.md.tmpl")),
    (".gitignore", "/build\n/.venv\n/*.wasm\n"),
];

const JS: Template = &[
    ("{{name}}.js", include_str!("../../templates/js/plugin.js.tmpl")),
    ("Makefile", include_str!("../../templates/js/Makefile.tmpl")),
    ("package.json", include_str!("../../templates/js/package.json.tmpl")),
    // The repository's lock for the same componentize-qjs, renamed below.
    (
        "package-lock.json",
        include_str!("../../../plugins/toolchain/package-lock.json"),
    ),
    ("events.jsonl", EVENTS),
    ("{{name}}.toml", include_str!("../../templates/js/manifest.toml.tmpl")),
    ("README.md", include_str!("../../templates/js/README.md.tmpl")),
    (".gitignore", "/build\n/node_modules\n/*.wasm\n"),
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

pub fn new(name: &str, lang: Lang, dir: Option<&Path>, sdk: Option<&Path>) -> anyhow::Result<ExitCode> {
    if !valid_name(name) {
        bail!(
            "`{}` is not a valid plugin name: use lowercase letters, digits, `-` and `_`, starting with a letter",
            plugbus::text::printable(name)
        );
    }
    if name == plugbus::event::HOST_SOURCE {
        bail!(
            "`{name}` is reserved: it is the source of the events the host and the application publish, so no host loads a plugin of that name; choose another"
        );
    }
    let root = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(name));
    if root.exists() && !root.is_dir() {
        bail!(
            "{} is a file; give a directory to create, or an empty one",
            root.display()
        );
    }
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
        // The JavaScript lock file is the repository's own, under its name.
        ("\"plugbus-js-toolchain\"", format!("{name:?}")),
    ];
    let fill = |text: &str| vars.iter().fold(text.to_owned(), |t, (k, v)| t.replace(k, v));
    let template = match lang {
        Lang::Rust => RUST,
        Lang::C => C,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    };
    for (file, contents) in template {
        let path = root.join(fill(file));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, fill(contents)).with_context(|| format!("writing {}", path.display()))?;
    }
    outln!("created plugin `{name}` in {}", root.display())?;
    let root = root.display();
    match lang {
        Lang::Rust => {
            outln!("  cd {root} && cargo build --release")?;
            // Cargo names the file after the crate (`-` becomes `_`); a
            // plugin's name is its file's, and its manifest `{name}.toml`.
            outln!(
                "  then copy target/wasm32-wasip2/release/{}.wasm into your plugin directory as {name}.wasm (with {name}.toml)",
                name.replace('-', "_")
            )?;
        }
        Lang::C | Lang::Js => outln!("  cd {root} && make       # see README.md for the toolchain")?,
        Lang::Python => {
            outln!(
                "  cd {root} && python3 -m venv .venv && .venv/bin/pip install --require-hashes -r requirements.txt"
            )?;
            outln!("  make COMPONENTIZE_PY=.venv/bin/componentize-py")?;
        }
    }
    if lang != Lang::Rust {
        outln!("  then copy {name}.wasm (and {name}.toml) into your plugin directory")?;
    }
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
