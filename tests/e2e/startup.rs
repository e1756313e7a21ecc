//! Start-up: `plugbus serve` listens at once and loads its plugins in the
//! background (`/healthz` at once, `/readyz` once they are in). With a log,
//! an event accepted meanwhile reaches every plugin of the directory, as a
//! live event (its follow-ups are published); without one, events are
//! refused with 503 until the plugins are in. Loads are slowed down with the
//! `plugin.compile` failpoint so the window is wide on any machine.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, http, http_with, plugbus, plugin_dir};

/// Every load waits 3 s before compiling: a start-up window in which
/// requests are certain to arrive.
const SLOW_LOADS: (&str, &str) = ("FAILPOINTS", "plugin.compile=sleep(3000)");

fn model_responded(cost: f64) -> String {
    json!({
        "name": "model_responded",
        "payload": { "model": "m", "usage": { "prompt_tokens": 100, "completion_tokens": 50 }, "cost_usd": cost },
        "correlation_id": "run-1",
    })
    .to_string()
}

fn readyz(addr: &str) -> (u16, Value) {
    let (status, body) = http(addr, "GET", "/readyz", b"");
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}")),
    )
}

/// The plugin `name`'s entry in `GET /plugins`, once `check` holds for it.
fn plugin_when(addr: &str, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, body) = http(addr, "GET", "/plugins", b"");
        let all: Value = serde_json::from_str(&body).unwrap();
        let plugin = all["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned();
        if let Some(plugin) = plugin.filter(|p| check(p)) {
            return plugin;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name} never got there: {all}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn events_accepted_while_plugins_load_reach_them_from_the_log_with_their_follow_ups() {
    let plugins = plugin_dir(&["cost-tracker", "console-logger"]);
    let log = tempfile::tempdir().unwrap();
    let log_dir = log.path().to_str().unwrap();
    let starting = support::serve_starting(
        &["--plugins", plugins.path().to_str().unwrap(), "--log", log_dir],
        &[SLOW_LOADS],
    );
    let addr = starting.addr.clone();

    // Listening, alive, not ready: both plugins still loading.
    assert_eq!(http(&addr, "GET", "/healthz", b"").0, 200);
    let (status, body) = readyz(&addr);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["catches_up"], true, "{body}");
    assert_eq!(body["loading"].as_array().unwrap().len(), 2, "{body}");

    // Three calls past cost-tracker's $0.05 budget, acknowledged durably
    // while neither plugin is loaded.
    let calls = [model_responded(0.02), model_responded(0.02), model_responded(0.02)].join("\n");
    let (status, reply) = http(&addr, "POST", "/events", calls.as_bytes());
    assert_eq!(status, 202, "{reply}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["durable"], true, "{reply}");
    assert_eq!(readyz(&addr).0, 503, "accepted during start-up");

    let (mut child, addr, stderr) = starting.wait_ready();
    let (status, body) = readyz(&addr);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["loaded"], 2, "{body}");
    assert!(body["loading"].as_array().unwrap().is_empty(), "{body}");

    // cost-tracker handled the three calls, and its budget_exceeded (a
    // follow-up of the third) was published: they were new to it, not history.
    let cost = plugin_when(&addr, "cost-tracker", |p| p["stats"]["ok"] == 3);
    assert_eq!(cost["stats"]["errors"], 0, "{cost}");
    plugin_when(&addr, "console-logger", |p| p["stats"]["ok"].as_u64() >= Some(4));
    support::terminate(&child);
    assert!(child.wait().unwrap().success());
    let stderr = stderr.join().unwrap();

    let out = plugbus(&["log", "show", "--log", log_dir, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let count = |name: &str| names.iter().filter(|n| *n == name).count();
    assert_eq!(count("model_responded"), 3, "{names:?}");
    assert_eq!(count("budget_exceeded"), 1, "{names:?}\n{stderr}");
}

#[test]
fn without_a_log_events_are_refused_with_retry_after_until_plugins_are_loaded() {
    let plugins = plugin_dir(&["cost-tracker"]);
    let starting = support::serve_starting(&["--plugins", plugins.path().to_str().unwrap()], &[SLOW_LOADS]);
    let addr = starting.addr.clone();
    let (status, body) = readyz(&addr);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["catches_up"], false, "{body}");

    // Nothing could bring these to cost-tracker later: refused, retryable.
    let raw = raw_post(&addr, "/events", "application/json", &model_responded(0.01));
    assert!(raw.starts_with("HTTP/1.1 503"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("retry-after: 1"), "{raw}");
    assert!(raw.contains("plugins still loading"), "{raw}");
    let raw = raw_post(&addr, "/v1/traces", "application/json", r#"{"resourceSpans":[]}"#);
    assert!(
        raw.starts_with("HTTP/1.1 503"),
        "an OTLP exporter retries on 503: {raw}"
    );
    assert!(raw.to_ascii_lowercase().contains("retry-after: 1"), "{raw}");

    let (mut child, addr, stderr) = starting.wait_ready();
    let (status, reply) = http_with(
        &addr,
        "POST",
        "/events",
        &[("Content-Type", "application/json")],
        model_responded(0.01).as_bytes(),
    );
    assert_eq!(status, 202, "{reply}");
    plugin_when(&addr, "cost-tracker", |p| p["stats"]["ok"] == 1);
    support::terminate(&child);
    assert!(child.wait().unwrap().success());
    drop(stderr.join());
}

#[test]
fn a_host_stopped_while_plugins_load_exits_at_once_and_cleanly() {
    let plugins = plugin_dir(&["cost-tracker", "console-logger"]);
    let log = tempfile::tempdir().unwrap();
    let (mut child, _addr, stderr) = support::serve_starting(
        &[
            "--plugins",
            plugins.path().to_str().unwrap(),
            "--log",
            log.path().to_str().unwrap(),
        ],
        &[("FAILPOINTS", "plugin.compile=sleep(20000)")],
    )
    .drain();
    // SIGTERM as soon as it listens: a graceful stop, not a kill.
    let stopped = Instant::now();
    support::terminate(&child);
    assert!(child.wait().unwrap().success());
    let stderr = stderr.join().unwrap();
    // Not held up by the loads (each waits 20 s before compiling): a
    // behaviour, not a speed, so the bound is loose.
    assert!(stopped.elapsed() < Duration::from_secs(10), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("plugbus: ready"), "{stderr}");
}

/// A POST whose whole raw answer (status line and headers) is returned.
fn raw_post(addr: &str, path: &str, content_type: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw
}
