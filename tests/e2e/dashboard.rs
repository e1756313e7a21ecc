//! The dashboard's endpoints on a real `plugbus serve`: the page and its
//! assets come from the binary; snapshots show every plugin with its
//! failure, backtrace and quarantine countdown; the stream pushes new
//! events and ends at shutdown; the event export speaks CloudEvents. (The
//! page itself is driven in Chromium by tests/browser/test_dashboard.py.)

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, SseStream};

fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = support::http(addr, "GET", path, b"");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn post(addr: &str, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let (status, answer) = support::http(addr, "POST", "/events", body.as_bytes());
    assert_eq!(status, 202, "{answer}");
}

fn plugin<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no plugin {name} in {snapshot}"))
}

/// Polls `/dashboard/snapshot` until `ready` holds (at most 10 s).
fn snapshot_until(addr: &str, mut ready: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snapshot = get_json(addr, "/dashboard/snapshot");
        if ready(&snapshot) {
            return snapshot;
        }
        assert!(Instant::now() < deadline, "snapshot never became ready: {snapshot}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_page_and_its_assets_come_from_the_binary_without_the_network() {
    let dir = support::plugin_dir(&["console-logger"]);
    let (mut child, addr, _stderr) = support::serve(&["--plugins", dir.path().to_str().unwrap()]);
    let (status, page) = support::http(&addr, "GET", "/", b"");
    assert_eq!(status, 200);
    assert!(
        page.contains("/dashboard.js") && page.contains("/dashboard.css"),
        "{page}"
    );
    for asset in ["/", "/dashboard.js", "/dashboard.css"] {
        let (status, body) = support::http(&addr, "GET", asset, b"");
        assert_eq!(status, 200, "{asset}");
        assert!(body.len() > 500, "{asset} is {} bytes", body.len());
        // Everything is served from here: no CDN, no font or script fetched
        // from elsewhere (an offline operator's page must work).
        for remote in ["http://", "https://", "//cdn", "@import"] {
            assert!(!body.contains(remote), "{asset} refers to `{remote}`");
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn snapshots_show_plugins_failures_with_backtraces_quarantine_and_the_log() {
    let dir = support::plugin_dir(&["cost-tracker", "console-logger"]);
    support::install(
        dir.path(),
        &support::wasm("misbehave"),
        "misbehave",
        "[limits]\nquarantine_after = 1\nquarantine_backoff_ms = 60000\n",
    );
    let log = tempfile::tempdir().unwrap();
    let (mut child, addr, _stderr) = support::serve_logged(dir.path(), log.path());
    post(
        &addr,
        &[
            json!({"name": "model_responded", "correlation_id": "run-1",
                   "payload": {"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 200}}),
            json!({"name": "tool.called", "correlation_id": "run-2", "payload": {"tool": "search"}}),
            json!({"name": "misbehave.panic", "correlation_id": "run-2", "payload": {}}),
        ],
    );
    // Ready once the bus's own `plugbus.plugin.quarantined` has reached the
    // tail too (it is published just after the state changes).
    let snapshot = snapshot_until(&addr, |s| {
        plugin(s, "misbehave")["state"] == "quarantined"
            && plugin(s, "cost-tracker")["delivered"] == 1
            && s["events"].as_array().unwrap().len() == 4
    });

    let bad = plugin(&snapshot, "misbehave");
    let failure = &bad["last_failure"];
    assert_eq!(failure["kind"], "panic", "{bad}");
    assert_eq!(failure["event"], "misbehave.panic");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("misbehave asked to panic"),
        "{failure}"
    );
    let frames: Vec<&str> = failure["backtrace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        frames.iter().any(|f| f.contains("misbehave")),
        "backtrace names the plugin's code: {frames:?}"
    );
    let retry_in = bad["quarantine_retry_in_ms"].as_u64().unwrap();
    assert!(
        retry_in > 50_000 && retry_in <= 60_000,
        "a countdown from 60 s: {retry_in}"
    );
    assert_eq!(bad["failures"]["panic"], 1);
    assert_eq!(bad["dead_letters"], 1);

    let good = plugin(&snapshot, "cost-tracker");
    assert_eq!(good["state"], "ready");
    assert_eq!(good["language"], "Rust");
    assert_eq!(good["ok"], 1);
    assert!(good["size_bytes"].as_u64().unwrap() > 10_000);
    assert_eq!(good["queue_depth"], 0);
    assert_eq!(good["queue_capacity"], 1024);
    assert!(good["memory_bytes"].as_u64().unwrap() > 0);
    assert!(good["memory_limit_bytes"].as_u64().unwrap() >= good["memory_bytes"].as_u64().unwrap());
    assert!(good["fuel_per_event"].as_u64().unwrap() > 0);
    let (p50, p99) = (
        good["latency_p50_us"].as_f64().unwrap(),
        good["latency_p99_us"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{p50} {p99}");
    assert!(good["quarantine_retry_in_ms"].is_null());
    assert!(good["last_failure"].is_null());

    // The three posted, and the bus's own `plugbus.plugin.quarantined`.
    assert_eq!(snapshot["published"], 4, "{snapshot}");
    assert_eq!(snapshot["log"]["last_seq"], 4, "{snapshot}");
    let tail: Vec<&str> = snapshot["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tail,
        [
            "model_responded",
            "tool.called",
            "misbehave.panic",
            "plugbus.plugin.quarantined"
        ]
    );

    // The filters narrow the tail: by correlation id, by pattern, by both.
    let names = |path: &str| -> Vec<String> {
        get_json(&addr, path)["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names("/dashboard/snapshot?correlation_id=run-2"),
        ["tool.called", "misbehave.panic"]
    );
    assert_eq!(names("/dashboard/snapshot?pattern=misbehave.*"), ["misbehave.panic"]);
    assert_eq!(
        names("/dashboard/snapshot?pattern=**&correlation_id=run-1"),
        ["model_responded"]
    );
    assert!(names("/dashboard/snapshot?pattern=tool.*&correlation_id=run-1").is_empty());
    let (status, body) = support::http(&addr, "GET", "/dashboard/snapshot?pattern=a..b", b"");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("pattern"), "{body}");

    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn the_stream_pushes_snapshots_with_new_events_and_ends_at_shutdown() {
    let dir = support::plugin_dir(&["console-logger"]);
    let (child, addr, stderr) = support::serve(&["--plugins", dir.path().to_str().unwrap()]);
    post(&addr, &[json!({"name": "before", "payload": {"n": 0}})]);
    let (status, stream) = SseStream::open(&addr, "/dashboard/stream?pattern=step.*");
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    let first = stream.next(Duration::from_secs(5)).expect("a snapshot at once");
    assert_eq!(first.event, "snapshot");
    let first: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(plugin(&first, "console-logger")["state"], "ready");
    assert!(first["events"].as_array().unwrap().is_empty(), "filtered out: {first}");

    post(
        &addr,
        &[
            json!({"name": "step.one", "payload": {"n": 1}}),
            json!({"name": "other", "payload": {}}),
            json!({"name": "step.two", "payload": {"n": 2}}),
        ],
    );
    let posted = Instant::now();
    let mut seen = Vec::new();
    let got = stream.until(Duration::from_secs(5), |m| {
        let v: Value = serde_json::from_str(&m.data).unwrap();
        for e in v["events"].as_array().unwrap() {
            seen.push(e["name"].as_str().unwrap().to_owned());
        }
        seen.len() >= 2
    });
    assert!(got.is_some(), "new events arrive on the stream: {seen:?}");
    assert_eq!(seen, ["step.one", "step.two"]);
    // Pushed within a snapshot interval (0.5 s), with room for a slow machine.
    assert!(posted.elapsed() < Duration::from_secs(3), "{:?}", posted.elapsed());

    // An open stream does not hold up a graceful shutdown.
    support::terminate(&child);
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "serve still running 10 s after SIGTERM with a stream open"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}: {}", stderr.join().unwrap());
    assert!(stream.next(Duration::from_secs(2)).is_none(), "the stream ended");
}

#[test]
fn the_event_export_streams_cloudevents_or_plugbus_json_filtered() {
    let dir = support::plugin_dir(&["console-logger"]);
    let (mut child, addr, _stderr) = support::serve(&["--plugins", dir.path().to_str().unwrap()]);
    let (status, ce) = SseStream::open(&addr, "/events/stream?format=cloudevents&pattern=tool.*");
    assert_eq!(status, 200);
    let mut ce = ce.unwrap();
    let (_, plain) = SseStream::open(&addr, "/events/stream?correlation_id=run-9");
    let mut plain = plain.unwrap();
    // Subscribed once the response head arrived; let both settle.
    std::thread::sleep(Duration::from_millis(200));
    post(
        &addr,
        &[
            json!({"name": "tool.called", "correlation_id": "run-9", "payload": {"tool": "search"}}),
            json!({"name": "llm.call", "correlation_id": "run-9", "payload": {}}),
            json!({"name": "tool.done", "payload": {"ok": true}}),
        ],
    );
    let mut types = Vec::new();
    for _ in 0..2 {
        let m = ce.next(Duration::from_secs(5)).expect("a CloudEvent");
        let v: Value = serde_json::from_str(&m.data).unwrap();
        assert_eq!(v["specversion"], "1.0", "{v}");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(m.id.as_deref(), v["id"].as_str(), "the SSE id is the event id");
        types.push(v["type"].as_str().unwrap().to_owned());
        if v["type"] == "tool.called" {
            assert_eq!(v["correlationid"], "run-9");
            assert_eq!(v["data"], json!({"tool": "search"}));
            assert_eq!(v["source"], "host");
        }
    }
    assert_eq!(types, ["tool.called", "tool.done"]);

    let mut names = Vec::new();
    for _ in 0..2 {
        let m = plain.next(Duration::from_secs(5)).expect("a plugbus event");
        let v: Value = serde_json::from_str(&m.data).unwrap();
        assert_eq!(v["correlation_id"], "run-9");
        names.push(v["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(names, ["tool.called", "llm.call"]);

    let (status, _) = SseStream::open(&addr, "/events/stream?format=xml");
    assert_eq!(status, 400);
    let (status, _) = SseStream::open(&addr, "/events/stream?pattern=**.x");
    assert_eq!(status, 400);
    child.kill().unwrap();
    let _ = child.wait();
}
