//! The summary printed by `plugbus run`.

use std::fmt::Write;

use plugbus::{LoadFailure, PluginInfo};
use serde_json::{Value, json};

#[derive(Default)]
pub struct Report {
    pub events: u64,
    pub invalid_lines: u64,
    pub plugins: Vec<PluginInfo>,
    pub load_failures: Vec<LoadFailure>,
}

impl Report {
    /// `{"events", "invalid_lines", "plugins": [{name, state, delivered, ok,
    /// errors, failures{…}, dropped, restarts, fuel_consumed, memory_bytes, last_error?}],
    /// "load_failures": [{path, reason}]}`.
    pub fn to_json(&self) -> Value {
        let plugins: Vec<Value> = self
            .plugins
            .iter()
            .map(|p| {
                let mut v = json!({ "name": p.name, "state": p.state, "subscriptions": p.subscriptions });
                if let (Value::Object(obj), Ok(Value::Object(stats))) = (&mut v, serde_json::to_value(&p.stats)) {
                    obj.extend(stats);
                }
                v
            })
            .collect();
        json!({
            "events": self.events,
            "invalid_lines": self.invalid_lines,
            "plugins": plugins,
            "load_failures": self.load_failures,
        })
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{} events emitted, {} invalid lines\n",
            self.events, self.invalid_lines
        );
        let _ = writeln!(
            out,
            "{:<16} {:<10} {:>9} {:>7} {:>6} {:>8} {:>7} {:>8} {:>14} {:>8}  failures",
            "plugin", "state", "delivered", "ok", "errors", "failed", "dropped", "restarts", "fuel", "memory"
        );
        for p in &self.plugins {
            let s = &p.stats;
            let f = &s.failures;
            let kinds: Vec<String> = f
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            let state = serde_json::to_value(p.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "{:<16} {:<10} {:>9} {:>7} {:>6} {:>8} {:>7} {:>8} {:>14} {:>8}  {}",
                p.name,
                state,
                s.delivered,
                s.ok,
                s.errors,
                f.total(),
                s.dropped,
                s.restarts,
                s.fuel_consumed,
                mib(s.memory_bytes),
                if kinds.is_empty() {
                    "-".to_owned()
                } else {
                    kinds.join(" ")
                }
            );
        }
        for l in &self.load_failures {
            let _ = writeln!(
                out,
                "not loaded: {}: {}",
                plugbus::text::printable_path(&l.path),
                l.reason
            );
        }
        out
    }
}

/// `12.3 MiB`, or `-` with no instance.
fn mib(bytes: u64) -> String {
    if bytes == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}
