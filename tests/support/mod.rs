//! Shared helpers: the real plugins built from `plugins/`, temp plugin
//! directories, the `plugbus` binary, and a recording native handler.
//!
//! `make test` builds the plugins and the binary first and points
//! `PLUGBUS_WASM_DIR` / `PLUGBUS_BIN` at them; a plain `cargo test` builds
//! them here, once per test binary (cargo serialises concurrent builds).

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use plugbus::{Bus, Event};

/// Every plugin the tests use, by crate name.
pub const PLUGINS: &[&str] = &[
    "cost-tracker",
    "audit-log",
    "console-logger",
    "misbehave",
    "wrong-world",
];

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn cargo(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo {args:?} failed");
}

/// Directory holding `<plugin>.wasm` for every entry of [`PLUGINS`].
pub fn wasm_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PLUGBUS_WASM_DIR") {
            return PathBuf::from(dir);
        }
        let mut args = vec!["build", "--quiet", "--profile", "plugin", "--target", "wasm32-wasip2"];
        for p in PLUGINS {
            args.extend(["-p", p]);
        }
        cargo(&args);
        let out = target_dir().join("plugbus-test-wasm");
        std::fs::create_dir_all(&out).unwrap();
        for p in PLUGINS {
            let built = target_dir()
                .join("wasm32-wasip2/plugin")
                .join(format!("{}.wasm", p.replace('-', "_")));
            std::fs::copy(&built, out.join(format!("{p}.wasm"))).unwrap();
        }
        out
    })
}

/// The path of one built plugin.
pub fn wasm(plugin: &str) -> PathBuf {
    wasm_dir().join(format!("{plugin}.wasm"))
}

/// The `plugbus` binary.
pub fn plugbus_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PLUGBUS_BIN") {
            return PathBuf::from(bin);
        }
        // Same target selection as `cargo test`, so features unify the same
        // way and nothing is rebuilt.
        cargo(&["build", "--quiet", "--all-targets"]);
        target_dir().join("debug/plugbus")
    })
}

/// A temp directory holding the given plugins, each with its first-party
/// manifest (`plugins/<name>/<name>.toml`) when there is one.
pub fn plugin_dir(plugins: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for p in plugins {
        std::fs::copy(wasm(p), dir.path().join(format!("{p}.wasm"))).unwrap();
        let manifest = workspace_root().join("plugins").join(p).join(format!("{p}.toml"));
        if manifest.exists() {
            std::fs::copy(&manifest, dir.path().join(format!("{p}.toml"))).unwrap();
        }
    }
    dir
}

/// Records every event a native handler sees, in order.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Event>>>);

impl Recorder {
    pub fn attach(bus: &Bus, pattern: &str) -> Recorder {
        let r = Recorder::default();
        let sink = r.0.clone();
        bus.on(pattern, move |e| sink.lock().unwrap().push(e.clone())).unwrap();
        r
    }

    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    pub fn named(&self, name: &str) -> Vec<Event> {
        self.events().into_iter().filter(|e| e.name() == name).collect()
    }
}

/// The lines of the audit log written by the audit-log plugin in `dir`.
pub fn audit_lines(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("audit/events.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}
