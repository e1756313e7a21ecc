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
    // A malformed query string is refused in JSON, as every other bad input.
    let (status, _) = SseStream::open(&addr, "/events/stream?format=plugbus&format=cloudevents");
    assert_eq!(status, 400);
    let (status, text) = support::http(&addr, "GET", "/dashboard/snapshot?pattern=a&pattern=b", b"");
    assert_eq!(status, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(
        v["error"].as_str().unwrap().contains("malformed query string"),
        "{text}"
    );

    // Clients are capped (256 export streams, 64 page streams, counting the
    // two above): one more is told to come back, the others keep their
    // streams. Idle clients cost the host; a cap bounds what they cost.
    let mut held: Vec<SseStream> = (0..254)
        .map(|_| {
            SseStream::open(&addr, "/events/stream")
                .1
                .expect("an export stream under the cap")
        })
        .collect();
    let (status, _) = SseStream::open(&addr, "/events/stream");
    assert_eq!(status, 503, "the 257th export stream");
    held.extend((0..64).map(|_| {
        SseStream::open(&addr, "/dashboard/stream")
            .1
            .expect("a page stream under the cap")
    }));
    let (status, _) = SseStream::open(&addr, "/dashboard/stream");
    assert_eq!(status, 503, "the 65th page stream");
    // One gone makes room.
    drop(held.pop());
    let reopened = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        SseStream::open(&addr, "/dashboard/stream").0 == 200
    });
    assert!(reopened, "a page stream closed gives its place back");
    post(&addr, &[json!({"name": "tool.called", "payload": {}})]);
    assert!(
        ce.next(Duration::from_secs(5)).is_some(),
        "the first client still streams"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

/// `GET /runs/<id>/events` answered as JSON: `(status, body)`.
fn timeline(addr: &str, path: &str) -> (u16, Value) {
    let (status, body) = support::http(addr, "GET", path, b"");
    let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, body)
}

fn names_of(timeline: &Value) -> Vec<String> {
    timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

/// An OTel-fed event as the OTLP mapping publishes it: the span (`span_name`,
/// `span`, `parent`, its times) in `otel`.
fn otel_event(
    name: &str,
    run: &str,
    (span_name, span): (&str, &str),
    parent: Option<&str>,
    start: u64,
    end: u64,
) -> Value {
    let mut otel = json!({
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": span, "name": span_name,
        "kind": "internal", "start_unix_nano": start, "end_unix_nano": end, "status": "ok",
    });
    if let Some(parent) = parent {
        otel["parent_span_id"] = json!(parent);
    }
    json!({"name": name, "correlation_id": run, "payload": {"agent": "planner", "otel": otel}})
}

#[test]
fn a_runs_timeline_is_read_from_the_log_in_order_bounded_and_unknown_runs_are_404() {
    let dir = support::plugin_dir(&["agent-runs", "console-logger"]);
    let log = tempfile::tempdir().unwrap();
    let (mut child, addr, _stderr) = support::serve_logged(dir.path(), log.path());
    let t0 = 1_764_648_000_000_000_000u64;
    let big = "x".repeat(5_000);
    post(
        &addr,
        &[
            json!({"name": "agent.run_started", "correlation_id": "run-a", "payload": {"agent": "planner"}}),
            json!({"name": "tool.called", "correlation_id": "run-b", "payload": {"tool": "elsewhere"}}),
            json!({"name": "model_responded", "correlation_id": "run-a",
                   "payload": {"model": "gpt-4o", "usage": {"input_tokens": 100, "output_tokens": 20}}}),
            otel_event(
                "agent.run_started",
                "run-a",
                ("invoke_agent planner", "00f067aa0ba902b7"),
                None,
                t0,
                t0 + 900_000_000,
            ),
            otel_event(
                "tool.called",
                "run-a",
                ("execute_tool search", "b7ad6b7169203331"),
                Some("00f067aa0ba902b7"),
                t0 + 100_000_000,
                t0 + 400_000_000,
            ),
            json!({"name": "tool.result", "correlation_id": "run-a", "payload": {"tool": "search", "result": big}}),
            json!({"name": "agent.completed", "correlation_id": "run-a", "payload": {}}),
            json!({"name": "step", "correlation_id": "team/run 7", "payload": {}}),
        ],
    );
    let order = [
        "agent.run_started",
        "model_responded",
        "agent.run_started",
        "tool.called",
        "tool.result",
        "agent.completed",
    ];

    // The page finds agent-runs among the plugins that export `query`.
    let plugins = get_json(&addr, "/dashboard/snapshot");
    assert_eq!(plugin(&plugins, "agent-runs")["queryable"], true, "{plugins}");
    assert_eq!(plugin(&plugins, "console-logger")["queryable"], false);
    // It answers what the page asks once it has taken the events (they
    // reach plugins after the POST is answered).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = get_json(
            &addr,
            "/plugins/agent-runs/query?q=%7B%22runs%22%3A%7B%22agent%22%3A%22planner%22%7D%7D",
        );
        let runs: Vec<&str> = listed["answer"]["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run"].as_str().unwrap())
            .collect();
        if runs == ["run-a"] {
            break;
        }
        assert!(Instant::now() < deadline, "planner's runs: {listed}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The whole run, oldest first, from the log.
    let (status, whole) = timeline(&addr, "/runs/run-a/events");
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["run"], "run-a");
    assert_eq!(whole["from"], "log");
    assert_eq!(whole["truncated"], false);
    assert_eq!(names_of(&whole), order);
    let events = whole["events"].as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in log order: {seqs:?}");
    assert_eq!(seqs[0], 1);
    let first = &events[0];
    assert_eq!(first["source"], "host");
    assert!(first["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(first["time_unix_nanos"].as_u64().unwrap() > 0);
    assert_eq!(first["payload"], r#"{"agent":"planner"}"#, "the payload's JSON text");
    assert!(first.get("span").is_none(), "not OTel-fed: {first}");
    // OTel-fed events carry their span, the child naming its parent.
    let (parent, child_span) = (&events[2]["span"], &events[3]["span"]);
    assert_eq!(parent["span_id"], "00f067aa0ba902b7");
    assert!(parent.get("parent_span_id").is_none(), "a root: {parent}");
    assert_eq!(child_span["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(child_span["name"], "execute_tool search");
    assert_eq!(child_span["start_unix_nano"], t0 + 100_000_000);
    assert_eq!(child_span["end_unix_nano"], t0 + 400_000_000);
    assert_eq!(child_span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // A big payload is a preview, said to be cut.
    let result = &events[4];
    assert_eq!(result["payload_truncated"], true, "{result}");
    assert_eq!(result["payload"].as_str().unwrap().chars().count(), 2_000);
    assert!(events[0].get("payload_truncated").is_none());

    // `limit` bounds an answer; `after` goes on from a seq, page by page.
    let (status, page) = timeline(&addr, "/runs/run-a/events?limit=2");
    assert_eq!(status, 200);
    assert_eq!(names_of(&page), order[..2]);
    assert_eq!(page["truncated"], true);
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = timeline(&addr, &format!("/runs/run-a/events?limit=4&after={after}"));
        assert_eq!(status, 200, "{page}");
        paged.extend(names_of(&page));
        let Some(last) = page["events"].as_array().unwrap().last() else {
            break;
        };
        after = last["seq"].as_u64().unwrap();
        if page["truncated"] == false {
            break;
        }
    }
    assert_eq!(paged, order);
    let (status, none_new) = timeline(&addr, &format!("/runs/run-a/events?after={}", seqs[5]));
    assert_eq!(status, 200, "nothing new after the last seq is no error: {none_new}");
    assert_eq!(none_new["events"], json!([]));
    assert_eq!(none_new["truncated"], false);

    // Other runs: their own events only; an id that needs escaping.
    let (_, other) = timeline(&addr, "/runs/run-b/events");
    assert_eq!(names_of(&other), ["tool.called"]);
    let (status, escaped) = timeline(&addr, "/runs/team%2Frun%207/events");
    assert_eq!(status, 200, "{escaped}");
    assert_eq!(escaped["run"], "team/run 7");
    assert_eq!(names_of(&escaped), ["step"]);

    // Unknown runs and bad bounds are refused with a reason.
    let (status, unknown) = timeline(&addr, "/runs/run-404/events");
    assert_eq!(status, 404, "{unknown}");
    let reason = unknown["error"].as_str().unwrap();
    assert!(reason.contains("run-404") && reason.contains("log"), "{reason}");
    for bad in ["limit=0", "limit=5001", "limit=many", "after=-3"] {
        let (status, refused) = timeline(&addr, &format!("/runs/run-a/events?{bad}"));
        assert_eq!(status, 400, "{bad}: {refused}");
        let name = bad.split('=').next().unwrap();
        assert!(refused["error"].as_str().unwrap().contains(name), "{bad}: {refused}");
    }
    let (status, _) = timeline(&addr, "/runs/run-a/events?limit=5000");
    assert_eq!(status, 200, "the largest limit");
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn without_a_log_a_runs_timeline_comes_from_the_history_it_keeps() {
    let dir = support::plugin_dir(&["agent-runs"]);
    let (mut child, addr, _stderr) = support::serve(&["--plugins", dir.path().to_str().unwrap(), "--history", "6"]);
    post(
        &addr,
        &[
            json!({"name": "old", "correlation_id": "run-gone", "payload": {}}),
            json!({"name": "agent.run_started", "correlation_id": "run-h", "payload": {"agent": "a"}}),
            json!({"name": "noise", "correlation_id": "run-x", "payload": {}}),
        ],
    );
    post(
        &addr,
        &[
            json!({"name": "tool.called", "correlation_id": "run-h", "payload": {"tool": "t"}}),
            otel_event(
                "model_responded",
                "run-h",
                ("chat m", "b7ad6b7169203331"),
                Some("00f067aa0ba902b7"),
                1,
                2,
            ),
            json!({"name": "noise", "correlation_id": "run-x", "payload": {}}),
            json!({"name": "agent.completed", "correlation_id": "run-h", "payload": {}}),
        ],
    );
    // The last 6 events: `old` is gone.
    let (status, kept) = timeline(&addr, "/runs/run-h/events");
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["from"], "history");
    assert_eq!(kept["history_capacity"], 6);
    assert_eq!(
        names_of(&kept),
        ["agent.run_started", "tool.called", "model_responded", "agent.completed"]
    );
    assert_eq!(kept["events"][2]["span"]["parent_span_id"], "00f067aa0ba902b7");
    let seqs: Vec<u64> = kept["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 4, 5, 7], "numbered in publish order without a log too");
    let (_, page) = timeline(&addr, "/runs/run-h/events?limit=1&after=2");
    assert_eq!(names_of(&page), ["tool.called"]);
    assert_eq!(page["truncated"], true);
    let (status, gone) = timeline(&addr, "/runs/run-gone/events");
    assert_eq!(status, 404, "fallen out of the history: {gone}");
    assert!(gone["error"].as_str().unwrap().contains("last 6 events"), "{gone}");
    child.kill().unwrap();
    let _ = child.wait();
}
