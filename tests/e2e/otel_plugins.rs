//! One vocabulary for plugins (issue 20, item 3): agent sessions shaped
//! exactly as the OpenTelemetry GenAI mapping of docs/opentelemetry.md emits
//! them (ids `otel-<trace>-<span>`, span times, the service as source, the
//! trace id as correlation id, `usage.prompt_tokens` and no `cost_usd`, an
//! `otel` object, and the `invoke_agent` span's events after its children's,
//! as spans reach an exporter when they end) through a real bus with the
//! real cost-tracker and agent-runs components. Also: snapshots written by
//! the builds before this change restore into today's.

use std::path::Path;

use plugbus::{Bus, Event};
use serde_json::{Value, json};

use crate::projections::{Native, logged};
use crate::support::{self, Recorder};

/// `service.name` of the instrumented agent: the events' source.
const SERVICE: &str = "travel-agent";
/// 2026-12-03T10:00:00Z: span times are offsets from it.
const BASE_NS: u64 = 1_796_292_000_000_000_000;

/// A span time `ms` milliseconds after [`BASE_NS`].
fn at(ms: u64) -> u64 {
    BASE_NS + ms * 1_000_000
}

/// RFC 3339 with nanoseconds, for a time within a minute of [`BASE_NS`].
fn rfc3339(ns: u64) -> String {
    let offset = ns - BASE_NS;
    assert!(offset < 60_000_000_000, "the helper covers one minute");
    format!(
        "2026-12-03T10:00:{:02}.{:09}Z",
        offset / 1_000_000_000,
        offset % 1_000_000_000
    )
}

/// The events of one trace, as the GenAI mapping makes them.
struct Trace {
    id: &'static str,
    /// The `invoke_agent` span: the parent of every other span here.
    root: &'static str,
    events: Vec<Event>,
}

impl Trace {
    fn new(id: &'static str, root: &'static str) -> Trace {
        Trace {
            id,
            root,
            events: Vec::new(),
        }
    }

    /// Event id of a span's end (`start`: of its start).
    fn id_of(&self, span: &str, start: bool) -> String {
        format!("otel-{}-{span}{}", self.id, if start { "-start" } else { "" })
    }

    fn otel(&self, span: &str, name: &str, kind: &str, (start, end): (u64, u64), error: Option<&str>) -> Value {
        let mut otel = json!({
            "trace_id": self.id, "span_id": span, "name": name, "kind": kind,
            "start_unix_nano": at(start), "end_unix_nano": at(end),
            "status": if error.is_some() { "error" } else { "unset" },
            "service": SERVICE, "scope": "opentelemetry.instrumentation.openai_v2",
        });
        if span != self.root {
            otel["parent_span_id"] = json!(self.root);
        }
        if let Some(e) = error {
            otel["status_message"] = json!(e);
        }
        otel
    }

    /// Publishes-to-be: an event as `POST /v1/traces` would append it.
    fn push(&mut self, name: &str, id: String, time: u64, payload: Value) {
        let event = plugbus::cloudevents::from_json(&json!({
            "specversion": "1.0", "id": id, "source": SERVICE, "type": name,
            "time": rfc3339(time), "correlationid": self.id, "data": payload,
        }))
        .unwrap();
        assert_eq!(event.time_unix_nanos(), time);
        self.events.push(event);
    }

    /// A `chat` span: `model_responded` at its end with `fields` added.
    fn chat(&mut self, span: &str, (start, end): (u64, u64), fields: Value) {
        let error = fields.get("error").and_then(Value::as_str);
        let mut payload = json!({
            "provider": "openai", "operation": "chat",
            "latency_ms": (end - start) as f64,
            "otel": self.otel(span, "chat", "client", (start, end), error),
        });
        for (k, v) in fields.as_object().unwrap() {
            payload[k] = v.clone();
        }
        self.push("model_responded", self.id_of(span, false), at(end), payload);
    }

    /// An `execute_tool` span: `tool.called` at its start, `tool.result` at its end.
    fn tool(&mut self, span: &str, (start, end): (u64, u64), tool: &str, args: Value, outcome: Result<Value, &str>) {
        let call_id = format!("call_{span}");
        let error = outcome.as_ref().err().copied();
        let otel = self.otel(span, &format!("execute_tool {tool}"), "internal", (start, end), error);
        let called = json!({"tool": tool, "call_id": call_id, "tool_type": "function", "args": args, "otel": otel});
        self.push("tool.called", self.id_of(span, true), at(start), called);
        let mut result = json!({"tool": tool, "call_id": call_id, "tool_type": "function",
                                "latency_ms": (end - start) as f64, "otel": otel});
        match outcome {
            Ok(value) => result["result"] = value,
            Err(e) => result["error"] = json!(e),
        }
        self.push("tool.result", self.id_of(span, false), at(end), result);
    }

    /// The root `invoke_agent` span: `agent.run_started` at its start, then
    /// `agent.run_finished` (or `agent.failed` with `error`) at its end.
    fn invoke_agent(&mut self, (start, end): (u64, u64), agent: &str, error: Option<&str>) {
        let root = self.root;
        let otel = self.otel(root, &format!("invoke_agent {agent}"), "internal", (start, end), error);
        let agent_id = format!("asst_{agent}");
        self.push(
            "agent.run_started",
            self.id_of(root, true),
            at(start),
            json!({"agent": agent, "agent_id": agent_id, "model": "gpt-4o", "otel": otel}),
        );
        let duration_ms = (end - start) as f64;
        let (name, payload) = match error {
            None => (
                "agent.run_finished",
                json!({"agent": agent, "agent_id": agent_id, "status": "completed",
                       "duration_ms": duration_ms, "otel": otel}),
            ),
            Some(e) => (
                "agent.failed",
                json!({"agent": agent, "agent_id": agent_id, "error": e, "duration_ms": duration_ms, "otel": otel}),
            ),
        };
        self.push(name, self.id_of(root, false), at(end), payload);
    }
}

const TRACE_A: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACE_B: &str = "5b8efff798038103d269b633813fc60c";

/// Two runs of the travel agent, in the order an exporter delivers them: each
/// trace's children in one request (in time order), its `invoke_agent` span
/// in a later one. Run A (agent `planner`, never named by its children)
/// completes, with a tool that timed out; run B's children name a
/// sub-agent, the root `booker`, and it fails after a rate-limited call.
fn travel_session() -> (Trace, Trace) {
    let mut a = Trace::new(TRACE_A, "00f067aa0ba902b7");
    a.chat(
        "a000000000000001",
        (100, 1300),
        json!({
            "model": "gpt-4.1-mini-2025-04-14", "request_model": "gpt-4.1-mini",
            "usage": {"prompt_tokens": 1200, "completion_tokens": 7550, "cache_read_tokens": 200},
            "finish_reasons": ["tool_calls"],
            "input_messages": [{"role": "user", "parts": [{"type": "text", "content": "A flight to Lisbon on Friday"}]}],
            "output_messages": [{"role": "assistant", "parts": [{"type": "tool_call", "name": "search_flights",
                                  "arguments": {"to": "LIS"}}]}],
        }),
    );
    a.tool(
        "a000000000000002",
        (1400, 2100),
        "search_flights",
        json!({"to": "LIS", "date": "2026-12-04"}),
        Ok(json!([{"flight": "TP1351", "usd": 189}])),
    );
    a.chat(
        "a000000000000003",
        (2200, 3900),
        json!({
            "model": "gpt-4o-2024-08-06", "request_model": "gpt-4o",
            "usage": {"prompt_tokens": 3000, "completion_tokens": 2500, "cache_read_tokens": 1000,
                      "cache_creation_tokens": 0},
            "finish_reasons": ["tool_calls"],
        }),
    );
    a.tool(
        "a000000000000004",
        (4000, 9000),
        "book_hotel",
        json!({"city": "Lisbon"}),
        Err("TimeoutError"),
    );
    // A producer that knows its price: the carried cost counts, no cost.priced.
    a.chat(
        "a000000000000005",
        (9100, 9500),
        json!({"model": "gpt-4o", "usage": {"prompt_tokens": 400, "completion_tokens": 100}, "cost_usd": 0.0625}),
    );
    // A model in no table (the usage aliases): $0, counted and logged once.
    a.chat(
        "a000000000000006",
        (9600, 9800),
        json!({"model": "mystery-llm-7b", "usage": {"input_tokens": 10, "output_tokens": 5}}),
    );
    a.invoke_agent((0, 10_000), "planner", None);

    let mut b = Trace::new(TRACE_B, "b000000000000000");
    b.tool(
        "b000000000000001",
        (20_100, 20_300),
        "lookup_fares",
        json!({"route": "LIS-OPO"}),
        Ok(json!("3 fares")),
    );
    b.chat(
        "b000000000000002",
        (20_400, 20_500),
        json!({"model": "gpt-4o", "agent": "researcher", "error": "RateLimitError"}),
    );
    b.chat(
        "b000000000000003",
        (20_600, 24_600),
        json!({"model": "gpt-4o-2024-08-06", "agent": "researcher",
               "usage": {"prompt_tokens": 100_000, "completion_tokens": 3125}}),
    );
    b.chat(
        "b000000000000004",
        (24_700, 25_000),
        json!({"model": "gpt-4o-2024-11-20", "agent": "booker",
               "usage": {"prompt_tokens": 6250, "completion_tokens": 0}}),
    );
    b.invoke_agent((20_000, 25_100), "booker", Some("MaxTurnsExceeded"));
    (a, b)
}

/// Every event handled: the runs' bursts must not be dropped.
const DEEP_QUEUE: &str = "[limits]\nqueue_capacity = 4096\n";

async fn open(dir: &Path, log: &Path) -> Bus {
    Bus::builder()
        .plugin_dir(dir)
        .watch(false)
        .log_dir(log)
        .build()
        .await
        .unwrap()
}

async fn ask(bus: &Bus, request: &str) -> (Value, u64) {
    let answer = bus.query("agent-runs", request).await.unwrap();
    let seq = answer.as_of_seq.expect("agent-runs handled events");
    (answer.parse().unwrap(), seq)
}

/// The native twin of agent-runs over the logged events up to `seq`, once
/// the log holds them (follow-ups are appended after the events that
/// caused them: `flush` does not wait for the log writer).
async fn native(bus: &Bus, log: &Path, seq: u64) -> Native {
    bus.event_log().unwrap().wait_written(seq).await.unwrap();
    Native::of(&logged(log, seq))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otel_fed_session_is_priced_and_built_into_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = tempfile::tempdir().unwrap();
    // The manifest's table replaces the built-in gpt-4.1-mini entry and
    // keeps the others (gpt-4o: $2.50 in, $10 out, $1.25 cache reads).
    let manifest = r#"
[config]
budget_usd = "0.25"
prices = '''{"gpt-4.1-mini": {"input": 0.5, "output": 2, "cache_read": 0.125}}'''
"#;
    support::install(dir.path(), &support::wasm("cost-tracker"), "cost-tracker", manifest);
    support::install(dir.path(), &support::wasm("agent-runs"), "agent-runs", DEEP_QUEUE);
    let bus = open(dir.path(), log.path()).await;
    let priced = Recorder::attach(&bus, "cost.priced");
    let budget = Recorder::attach(&bus, "budget_exceeded");
    let (a, b) = travel_session();
    for event in a.events.iter().chain(&b.events) {
        bus.publish(event.clone());
    }
    bus.flush().await;

    // Priced from the tables, exactly: token counts times dyadic prices.
    // a1: 1000 uncached × 0.5 + 200 cache reads × 0.125 + 7550 × 2 = 15,625 µ$ (manifest table)
    // a3: 2000 × 2.5 + 1000 × 1.25 + 2500 × 10 = 31,250 µ$ (built-in gpt-4o, by prefix)
    // b3: 100,000 × 2.5 + 3125 × 10 = 281,250 µ$; b4: 6250 × 2.5 = 15,625 µ$
    let expected = [
        (
            &a,
            "a000000000000001",
            "gpt-4.1-mini-2025-04-14",
            "gpt-4.1-mini",
            0.015625,
            (1200, 7550, 200, 0),
        ),
        (
            &a,
            "a000000000000003",
            "gpt-4o-2024-08-06",
            "gpt-4o",
            0.03125,
            (3000, 2500, 1000, 0),
        ),
        (
            &b,
            "b000000000000003",
            "gpt-4o-2024-08-06",
            "gpt-4o",
            0.28125,
            (100_000, 3125, 0, 0),
        ),
        (
            &b,
            "b000000000000004",
            "gpt-4o-2024-11-20",
            "gpt-4o",
            0.015625,
            (6250, 0, 0, 0),
        ),
    ];
    let got = priced.events();
    assert_eq!(
        got.len(),
        expected.len(),
        "one cost.priced per call priced from a table: {got:?}"
    );
    for (event, (trace, span, model, key, cost, (prompt, completion, cache_read, cache_creation))) in
        got.iter().zip(expected)
    {
        assert_eq!(
            *event.payload(),
            json!({
                "model": model, "cost_usd": cost, "priced_as": key,
                "prompt_tokens": prompt, "completion_tokens": completion,
                "cache_read_tokens": cache_read, "cache_creation_tokens": cache_creation,
                "trigger_event_id": trace.id_of(span, false),
            })
        );
        assert_eq!(event.correlation_id(), Some(trace.id), "in the call's run");
        assert_eq!(event.source(), "cost-tracker");
    }

    // The budget ($0.25) is passed once, by b3: a1 + a3 + a5's carried
    // $0.0625 + the unpriced $0 + b3, over six calls (b2 failed, no usage).
    let fired = budget.events();
    assert_eq!(fired.len(), 1, "budget_exceeded exactly once: {fired:?}");
    assert_eq!(
        *fired[0].payload(),
        json!({
            "budget_usd": 0.25, "spent_usd": 0.015625 + 0.03125 + 0.0625 + 0.0 + 0.28125, "calls": 6,
            "tokens": 8750 + 5500 + 500 + 15 + 103_125,
            "trigger_event_id": b.id_of("b000000000000003", false),
        })
    );
    assert_eq!(fired[0].correlation_id(), Some(TRACE_B));

    // The runs, named by their root spans although those came last.
    let (run_a, seq) = ask(&bus, &format!(r#"{{"run": "{TRACE_A}"}}"#)).await;
    assert_eq!(
        run_a,
        json!({
            "run": TRACE_A, "agent": "planner", "status": "completed",
            "tools": ["search_flights", "book_hotel"],
            "tokens": 8750 + 5500 + 500 + 15, "cost_usd": 0.109375,
            "errors": ["TimeoutError"], "model_calls": 4, "tool_calls": 2,
            // 6 calls and spans' events, 2 cost.priced, the root's 2.
            "events": 12, "first_ns": at(0), "last_ns": at(10_000), "duration_ms": 10_000,
        })
    );
    let (run_b, _) = ask(&bus, &format!(r#"{{"run": "{TRACE_B}"}}"#)).await;
    assert_eq!(
        run_b,
        json!({
            "run": TRACE_B, "agent": "booker", "status": "failed",
            "tools": ["lookup_fares"],
            "tokens": 103_125 + 6250, "cost_usd": 0.296875,
            "errors": ["RateLimitError", "MaxTurnsExceeded"], "model_calls": 3, "tool_calls": 1,
            // 2 tool events, 3 calls, 2 cost.priced, budget_exceeded, the root's 2.
            "events": 10, "first_ns": at(20_000), "last_ns": at(25_100), "duration_ms": 5100,
        })
    );
    // The service (the fallback name) and the sub-agent lost their runs to
    // the root agents, with every per-agent total.
    let (agents, _) = ask(&bus, r#"{"agents": true}"#).await;
    assert_eq!(
        agents,
        json!({"agents": {
            "planner": {"runs": 1, "tokens": 14_765, "errors": 1, "avg_duration_ms": 10_000.0},
            "booker": {"runs": 1, "tokens": 109_375, "errors": 2, "avg_duration_ms": 5100.0},
        }})
    );
    // And exactly what the native twin of its documentation says.
    let native = native(&bus, log.path(), seq).await;
    assert_eq!(run_a, native.run(TRACE_A));
    assert_eq!(run_b, native.run(TRACE_B));
    assert_eq!(agents, native.agents());
    for name in ["cost-tracker", "agent-runs"] {
        let info = bus.plugins().into_iter().find(|p| p.name == name).unwrap();
        assert_eq!(
            (info.stats.errors, info.stats.dropped),
            (0, 0),
            "{name}: {:?}",
            info.stats
        );
    }
    bus.shutdown().await;
}

/// The first-party manifests as shipped (no `prices`: the built-in table,
/// a $0.05 budget): each model priced by its longest matching key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_price_table_prices_otel_calls_by_longest_prefix() {
    let dir = support::plugin_dir(&["cost-tracker", "agent-runs"]);
    let log = tempfile::tempdir().unwrap();
    let bus = open(dir.path(), log.path()).await;
    let priced = Recorder::attach(&bus, "cost.priced");
    let budget = Recorder::attach(&bus, "budget_exceeded");
    let mut t = Trace::new(TRACE_A, "00f067aa0ba902b7");
    let usage = |prompt: u64, completion: u64, cache_read: u64, cache_creation: u64| {
        json!({"prompt_tokens": prompt, "completion_tokens": completion,
               "cache_read_tokens": cache_read, "cache_creation_tokens": cache_creation})
    };
    // 1000 × 2 + 500 × 8 = 6,000 µ$.
    t.chat(
        "c1",
        (0, 10),
        json!({"model": "gpt-4.1-2025-04-14", "usage": usage(1000, 500, 0, 0)}),
    );
    // Carried: counts, not priced.
    t.chat(
        "c2",
        (20, 30),
        json!({"model": "gpt-4.1", "usage": usage(1000, 500, 0, 0), "cost_usd": 0.002}),
    );
    // 1000 uncached × 15 + 1000 reads × 1.5 + 2000 writes × 18.75 + 200 × 75 = 69,000 µ$:
    // Opus 4.1 is `claude-opus-4`, past the $0.05 budget.
    t.chat(
        "c3",
        (40, 50),
        json!({"model": "claude-opus-4-1-20250805", "provider": "anthropic", "usage": usage(4000, 200, 1000, 2000)}),
    );
    // Opus 4.5 has a key of its own, longer: 1000 × 5 + 100 × 25 = 7,500 µ$.
    t.chat(
        "c4",
        (60, 70),
        json!({"model": "claude-opus-4-5-20251101", "usage": usage(1000, 100, 0, 0)}),
    );
    // All of the prompt read from the cache: 8000 × 0.125 = 1,000 µ$.
    t.chat(
        "c5",
        (80, 90),
        json!({"model": "gemini-2.5-pro", "usage": usage(8000, 0, 8000, 0)}),
    );
    // No usage (a failed call): nothing to price.
    t.chat(
        "c6",
        (100, 110),
        json!({"model": "gpt-4.1", "error": "APIConnectionError"}),
    );
    for event in &t.events {
        bus.publish(event.clone());
    }
    bus.flush().await;

    let got: Vec<(String, String, f64)> = priced
        .events()
        .iter()
        .map(|e| {
            let p = e.payload();
            (
                p["model"].as_str().unwrap().to_owned(),
                p["priced_as"].as_str().unwrap().to_owned(),
                p["cost_usd"].as_f64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("gpt-4.1-2025-04-14", "gpt-4.1", 0.006),
        ("claude-opus-4-1-20250805", "claude-opus-4", 0.069),
        ("claude-opus-4-5-20251101", "claude-opus-4-5", 0.0075),
        ("gemini-2.5-pro", "gemini-2.5-pro", 0.001),
    ]
    .map(|(m, k, c)| (m.to_owned(), k.to_owned(), c));
    assert_eq!(got, want);
    let fired = budget.events();
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].payload()["spent_usd"], 0.006 + 0.002 + 0.069);
    assert_eq!(fired[0].payload()["calls"], 3);

    let (run, seq) = ask(&bus, &format!(r#"{{"run": "{TRACE_A}"}}"#)).await;
    assert_eq!(run, native(&bus, log.path(), seq).await.run(TRACE_A));
    let cost = run["cost_usd"].as_f64().unwrap();
    assert!((cost - (0.006 + 0.002 + 0.069 + 0.0075 + 0.001)).abs() < 1e-12, "{run}");
    assert_eq!(
        (run["model_calls"].as_u64(), run["tool_calls"].as_u64()),
        (Some(6), Some(0))
    );
    assert_eq!(run["errors"], json!(["APIConnectionError"]));
    // Nobody named an agent: the run is the service's.
    assert_eq!(run["agent"], SERVICE);
    bus.shutdown().await;
}

/// A cost-tracker built before the price table (the committed 0.1.1 build,
/// whose state is today's minus `unpriced`) hot-swapped for today's on a bus
/// without a log: the new version takes the old one's snapshot, so its
/// totals go on and the budget fires on the first call it prices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_tracker_snapshot_from_before_the_price_table_restores() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "[config]\nbudget_usd = \"1.00\"\n";
    support::install(
        dir.path(),
        &support::compat_cost_tracker_0_1_1(),
        "cost-tracker",
        manifest,
    );
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .watch(false)
        .build()
        .await
        .unwrap();
    let budget = Recorder::attach(&bus, "budget_exceeded");
    let priced = Recorder::attach(&bus, "cost.priced");
    let carried =
        json!({"model": "gpt-4o", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}, "cost_usd": 0.40});
    for _ in 0..2 {
        bus.emit("model_responded", carried.clone());
    }
    // The old build prices nothing: $0.
    bus.emit(
        "model_responded",
        json!({"model": "gpt-4o", "usage": {"prompt_tokens": 100_000, "completion_tokens": 0}}),
    );
    bus.flush().await;
    assert!(priced.events().is_empty() && budget.events().is_empty());

    std::fs::copy(support::wasm("cost-tracker"), dir.path().join("cost-tracker.wasm")).unwrap();
    let (_, reload) = bus.reload_plugin(dir.path().join("cost-tracker.wasm")).await.unwrap();
    assert_eq!(reload, plugbus::Reload::Replaced);
    // 100,000 × $2.50 per 1M = $0.25: $1.05 with the restored $0.80.
    bus.emit(
        "model_responded",
        json!({"model": "gpt-4o", "usage": {"prompt_tokens": 100_000, "completion_tokens": 0}}),
    );
    bus.flush().await;
    assert_eq!(priced.events().len(), 1);
    assert_eq!(priced.events()[0].payload()["cost_usd"], 0.25);
    let fired = budget.events();
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].payload()["spent_usd"], 0.40 + 0.40 + 0.0 + 0.25);
    assert_eq!(fired[0].payload()["calls"], 4, "{:?}", fired[0].payload());
    let info = bus.plugins().into_iter().find(|p| p.name == "cost-tracker").unwrap();
    assert_eq!(info.stats.errors, 0, "{:?}", info.stats);
    bus.shutdown().await;
}

/// The snapshot agent-runs at 5631b22 kept beside a log (committed in
/// plugins/fixtures/compat-snapshots) restores into today's build, with the
/// new fields at their defaults, instead of being refused and rebuilt from
/// the log (whose events carry other times: the answer tells them apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_runs_snapshot_from_before_otel_restores() {
    let fixtures = support::workspace_root().join("plugins/fixtures/compat-snapshots");
    let dir = tempfile::tempdir().unwrap();
    let log = tempfile::tempdir().unwrap();
    support::install(dir.path(), &support::wasm("agent-runs"), "agent-runs", "");
    // A log of the five events the snapshot was taken after (seq 5).
    let bus = open(dir.path(), log.path()).await;
    let session = std::fs::read_to_string(fixtures.join("agent-runs-5631b22.events.jsonl")).unwrap();
    for line in session.lines() {
        bus.publish(plugbus::parse_event_line(line).unwrap());
    }
    bus.flush().await;
    bus.shutdown().await;
    std::fs::create_dir_all(log.path().join("snapshots")).unwrap();
    std::fs::copy(
        fixtures.join("agent-runs-5631b22.snap"),
        log.path().join("snapshots/agent-runs.snap"),
    )
    .unwrap();

    let bus = open(dir.path(), log.path()).await;
    let (legacy, seq) = ask(&bus, r#"{"run": "legacy-1"}"#).await;
    assert_eq!(seq, 5);
    assert_eq!(
        legacy,
        json!({
            "run": "legacy-1", "agent": "legacy-bot", "status": "completed", "tools": ["search"],
            "tokens": 120, "cost_usd": 0.5, "errors": [], "model_calls": 0, "tool_calls": 0, "events": 4,
            "first_ns": 1_796_323_508_625_125_088u64, "last_ns": 1_796_323_508_625_258_448u64, "duration_ms": 0,
        }),
        "the snapshot's run, not one rebuilt from the log"
    );
    // Runs it held go on; their agent (`host`, the source) is kept as it was.
    bus.publish(
        Event::new(
            "model_responded",
            json!({"agent": "late-name", "usage": {"prompt_tokens": 7, "completion_tokens": 3}}),
        )
        .with_correlation_id("legacy-2"),
    );
    bus.publish(Event::new("agent.run_finished", json!({})).with_correlation_id("legacy-2"));
    bus.flush().await;
    let (two, _) = ask(&bus, r#"{"run": "legacy-2"}"#).await;
    assert_eq!(
        (&two["agent"], &two["status"], &two["tools"], &two["tokens"]),
        (&json!("host"), &json!("completed"), &json!(["fetch"]), &json!(10))
    );
    assert_eq!(
        (&two["model_calls"], &two["tool_calls"], &two["events"]),
        (&json!(1), &json!(0), &json!(3))
    );
    let (agents, _) = ask(&bus, r#"{"agents": true}"#).await;
    assert_eq!(agents["agents"]["legacy-bot"]["runs"], 1);
    assert_eq!(agents["agents"]["host"]["tokens"], 10);
    assert!(agents["agents"].get("late-name").is_none(), "{agents}");
    let info = bus.plugins().into_iter().find(|p| p.name == "agent-runs").unwrap();
    assert_eq!(info.stats.errors, 0, "{:?}", info.stats);
    bus.shutdown().await;
}
