//! Queryable projections: plugins that export `query` (WIT 0.1.2) are read
//! models the host asks between two events, over Rust, HTTP and the CLI,
//! and rebuilds from the log. `agent-runs` is checked against a native
//! projection of the same logged events.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;

use plugbus::{Bus, Event, QueryError};
use serde_json::{Value, json};

use crate::support;

/// The native twin of `agent-runs`: runs and agents projected from logged
/// records, exactly as the plugin's documentation states.
#[derive(Default)]
pub(crate) struct Native {
    runs: BTreeMap<String, Value>,
    agents: BTreeMap<String, (u64, u64, u64, u64, u64)>,
}

impl Native {
    pub(crate) fn of(records: &[plugbus::log::Record]) -> Native {
        let mut n = Native::default();
        for r in records {
            n.apply(r);
        }
        n
    }

    fn apply(&mut self, r: &plugbus::log::Record) {
        if r.name.starts_with("plugbus.") {
            return;
        }
        let Some(id) = r.correlation_id.clone() else { return };
        let p = &r.payload;
        let t = r.time_unix_nanos;
        let text = |f: &str| p.get(f).and_then(Value::as_str).map(str::to_owned);
        let named = text("agent").or_else(|| text("agent_id"));
        let run_started = r.name == "agent.run_started";
        let run = self.runs.entry(id).or_insert_with(|| {
            let (agent, naming) = match &named {
                Some(a) if run_started => (a.clone(), json!({ "run_started": t })),
                Some(a) => (a.clone(), json!("payload")),
                None => (r.source.clone(), json!("source")),
            };
            json!({ "agent": agent, "status": "running", "tools": [], "tokens": 0, "cost_usd": 0.0,
                    "errors": [], "model_calls": 0, "tool_calls": 0, "events": 0, "first_ns": t, "last_ns": t,
                    "finished": false, "naming": naming, "finished_ms": 0 })
        });
        if run["events"] == 0 {
            let agent = run["agent"].as_str().unwrap().to_owned();
            self.agents.entry(agent).or_default().0 += 1;
        }
        // A later event renames the run: an earlier `agent.run_started`, or
        // any naming event while the name came from the source alone.
        if let Some(to) = &named {
            let renamed = match (run_started, run["naming"].get("run_started").and_then(Value::as_u64)) {
                (true, Some(at)) => (t < at).then(|| json!({ "run_started": t })),
                (true, None) => Some(json!({ "run_started": t })),
                (false, _) => (run["naming"] == "source").then(|| json!("payload")),
            };
            if let Some(naming) = renamed {
                run["naming"] = naming;
                let from = run["agent"].as_str().unwrap().to_owned();
                if from != *to {
                    let errors = run["errors"].as_array().unwrap().len() as u64;
                    let tokens = run["tokens"].as_u64().unwrap();
                    let finished = run["finished"] == true;
                    let ms = run["finished_ms"].as_u64().unwrap();
                    let a = self.agents.get_mut(&from).unwrap();
                    a.0 -= 1;
                    a.1 -= tokens;
                    a.2 -= errors;
                    if finished {
                        a.3 -= 1;
                        a.4 -= ms;
                    }
                    if a.0 == 0 {
                        self.agents.remove(&from);
                    }
                    let b = self.agents.entry(to.clone()).or_default();
                    b.0 += 1;
                    b.1 += tokens;
                    b.2 += errors;
                    if finished {
                        b.3 += 1;
                        b.4 += ms;
                    }
                    run["agent"] = json!(to);
                }
            }
        }
        let agent = run["agent"].as_str().unwrap().to_owned();
        run["events"] = json!(run["events"].as_u64().unwrap() + 1);
        run["first_ns"] = json!(run["first_ns"].as_u64().unwrap().min(t));
        run["last_ns"] = json!(run["last_ns"].as_u64().unwrap().max(t));
        let num = |ptr: &str| p.pointer(ptr).and_then(Value::as_u64);
        let err_text = || match p.get("error") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => Some(v.to_string()),
        };
        let add = |run: &mut Value, field: &str, by: u64| run[field] = json!(run[field].as_u64().unwrap() + by);
        let add_cost = |run: &mut Value| {
            if let Some(c) = p.get("cost_usd").and_then(Value::as_f64) {
                run["cost_usd"] = json!(run["cost_usd"].as_f64().unwrap() + c);
            }
        };
        let (mut tokens, mut error) = (0, None);
        match r.name.as_str() {
            "model_responded" => {
                add(run, "model_calls", 1);
                let prompt = num("/usage/prompt_tokens").or(num("/usage/input_tokens"));
                let completion = num("/usage/completion_tokens").or(num("/usage/output_tokens"));
                tokens = prompt.unwrap_or(0) + completion.unwrap_or(0);
                add_cost(run);
                error = err_text();
            }
            "cost.priced" => add_cost(run),
            "agent.tokens_generated" => tokens = num("/count").unwrap_or(0),
            "tool.called" => {
                add(run, "tool_calls", 1);
                if let Some(t) = text("tool") {
                    run["tools"].as_array_mut().unwrap().push(json!(t));
                }
            }
            "agent.tool_called" => {
                add(run, "tool_calls", 1);
                if let Some(t) = text("tool_name") {
                    run["tools"].as_array_mut().unwrap().push(json!(t));
                }
            }
            "tool.result" => error = err_text(),
            "agent.failed" => {
                run["status"] = json!("failed");
                error = Some(err_text().unwrap_or_else(|| "failed".into()));
            }
            "agent.completed" | "agent.run_finished" => run["status"] = json!("completed"),
            _ => {}
        }
        add(run, "tokens", tokens);
        let a = self.agents.entry(agent).or_default();
        a.1 += tokens;
        if let Some(e) = error {
            run["errors"].as_array_mut().unwrap().push(json!(e));
            a.2 += 1;
        }
        if run["status"] != "running" && run["finished"] == false {
            let ms = (run["last_ns"].as_u64().unwrap() - run["first_ns"].as_u64().unwrap()) / 1_000_000;
            run["finished"] = json!(true);
            run["finished_ms"] = json!(ms);
            a.3 += 1;
            a.4 += ms;
        }
    }

    /// The plugin's answer to `{"run": id}`.
    pub(crate) fn run(&self, id: &str) -> Value {
        let mut run = self.runs[id].clone();
        let o = run.as_object_mut().unwrap();
        for internal in ["finished", "naming", "finished_ms"] {
            o.remove(internal);
        }
        o.insert("run".into(), json!(id));
        let d = (o["last_ns"].as_u64().unwrap() - o["first_ns"].as_u64().unwrap()) / 1_000_000;
        o.insert("duration_ms".into(), json!(d));
        run
    }

    /// The plugin's answer to `{"agents": true}`.
    pub(crate) fn agents(&self) -> Value {
        let agents: serde_json::Map<String, Value> = self
            .agents
            .iter()
            .map(|(name, &(runs, tokens, errors, finished, total))| {
                let avg = (finished > 0).then(|| total as f64 / finished as f64);
                (
                    name.clone(),
                    json!({ "runs": runs, "tokens": tokens, "errors": errors, "avg_duration_ms": avg }),
                )
            })
            .collect();
        json!({ "agents": agents })
    }
}

/// Every record of the log in `dir` up to and including `seq`.
pub(crate) fn logged(dir: &Path, up_to: u64) -> Vec<plugbus::log::Record> {
    plugbus::LogReader::open(dir, 0)
        .unwrap()
        .map(|r| r.unwrap())
        .take_while(|r| r.seq <= up_to)
        .collect()
}

/// The events of the article's agent run: the other half of the names
/// `agent-runs` reads (`agent.tool_called`, `agent.tokens_generated`,
/// `agent.failed`, a tool error, `agent_id`).
fn article_run(id: &str) -> Vec<Event> {
    let ev = |name: &str, payload: Value| Event::new(name, payload).with_correlation_id(id);
    vec![
        ev("agent.started", json!({ "agent_id": "planner" })),
        ev("agent.tool_called", json!({ "tool_name": "search_flights" })),
        ev(
            "tool.result",
            json!({ "tool": "search_flights", "error": "upstream timeout" }),
        ),
        ev("agent.tokens_generated", json!({ "count": 512 })),
        ev("agent.tool_called", json!({ "tool_name": "book_hotel" })),
        ev(
            "model_responded",
            json!({ "usage": { "prompt_tokens": 100, "completion_tokens": 20 }, "cost_usd": 0.25 }),
        ),
        ev("agent.failed", json!({ "error": { "code": 42, "message": "budget" } })),
    ]
}

/// A query's answer, parsed; the test fails on an error.
async fn ask(bus: &Bus, plugin: &str, request: &str) -> Value {
    bus.query(plugin, request).await.unwrap().parse().unwrap()
}

fn demo_session() -> Vec<Event> {
    let text = std::fs::read_to_string(support::workspace_root().join("examples/agent-session.jsonl")).unwrap();
    text.lines().map(|l| plugbus::parse_event_line(l).unwrap()).collect()
}

/// A queue that holds a whole burst from several threads: these tests need
/// every event handled (the default 1024 drops, and counts, the excess).
const DEEP_QUEUE: &str = "[limits]\nqueue_capacity = 16384\n";

/// A bus over the plugins in `dir` (not watched), with a log in `log` if given.
async fn open(dir: &Path, log: Option<&Path>) -> Bus {
    let builder = Bus::builder().plugin_dir(dir).watch(false);
    let builder = match log {
        Some(log) => builder.log_dir(log),
        None => builder,
    };
    builder.build().await.unwrap()
}

async fn bus_with(plugins: &[&str], log: &Path) -> (Bus, tempfile::TempDir) {
    let dir = support::plugin_dir(plugins);
    support::install(dir.path(), &support::wasm("agent-runs"), "agent-runs", DEEP_QUEUE);
    (open(dir.path(), Some(log)).await, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_answers_match_a_native_projection_of_the_same_events() {
    let log = tempfile::tempdir().unwrap();
    // cost-tracker emits `budget_exceeded` follow-ups into the runs too.
    let (bus, _dir) = bus_with(&["agent-runs", "cost-tracker", "misbehave"], log.path()).await;
    for event in demo_session().into_iter().chain(article_run("trip-7")) {
        bus.publish(event);
    }
    bus.publish(Event::new("agent.heartbeat", json!({}))); // no correlation id: no run
    bus.flush().await;

    let run = bus.query("agent-runs", r#"{"run": "run-42"}"#).await.unwrap();
    let seq = run.as_of_seq.expect("the plugin handled events");
    // cost-tracker's follow-ups reach the log after the events that caused them.
    bus.event_log().unwrap().wait_written(seq).await.unwrap();
    let native = Native::of(&logged(log.path(), seq));
    assert_eq!(run.parse::<Value>().unwrap(), native.run("run-42"));
    let demo = run.parse::<Value>().unwrap();
    assert_eq!(demo["status"], "completed");
    assert_eq!(demo["tools"], json!(["web_search", "fetch_url", "read_file", "python"]));
    assert_eq!(demo["tokens"], 36_280);

    let trip = bus.query("agent-runs", r#"{"run": "trip-7"}"#).await.unwrap();
    let trip_json = trip.parse::<Value>().unwrap();
    assert_eq!(trip_json, native.run("trip-7"));
    assert_eq!(trip_json["status"], "failed");
    assert_eq!(trip_json["agent"], "planner");
    assert_eq!(trip_json["tools"], json!(["search_flights", "book_hotel"]));
    assert_eq!(trip_json["tokens"], 632);
    assert_eq!(
        trip_json["errors"],
        json!(["upstream timeout", r#"{"code":42,"message":"budget"}"#])
    );

    let agents = bus.query("agent-runs", r#"{"agents": true}"#).await.unwrap();
    assert_eq!(agents.parse::<Value>().unwrap(), native.agents());

    let listed = ask(&bus, "agent-runs", r#"{"runs": {"status": "failed", "limit": 5}}"#).await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 1);
    assert_eq!(listed["runs"][0]["run"], "trip-7");
    let all = ask(&bus, "agent-runs", r#"{"runs": {}}"#).await;
    let names: Vec<&str> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["trip-7", "run-42"], "newest first");
    // By agent (the dashboard's Runs view filters so), with the status too.
    let planner = ask(&bus, "agent-runs", r#"{"runs": {"agent": "planner"}}"#).await;
    assert_eq!(planner["runs"].as_array().unwrap().len(), 1, "{planner}");
    assert_eq!(planner["runs"][0]["run"], "trip-7");
    let none = ask(
        &bus,
        "agent-runs",
        r#"{"runs": {"agent": "planner", "status": "completed"}}"#,
    )
    .await;
    assert_eq!(none["runs"], json!([]));
    let summary = ask(&bus, "agent-runs", r#"{"summary": true}"#).await;
    assert_eq!(summary["uncorrelated"], 1);
    assert_eq!(summary["runs"], 2);

    // An unknown run, or an unknown query, is the plugin's refusal, named.
    match bus.query("agent-runs", r#"{"run": "run-404"}"#).await {
        Err(QueryError::Plugin { plugin, message }) => {
            assert_eq!(plugin, "agent-runs");
            assert!(message.contains("run-404"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        bus.query("agent-runs", r#"{"status": 1}"#).await,
        Err(QueryError::Plugin { .. })
    ));
    assert!(matches!(
        bus.query("agent-runs", r#"{"runs": {"status": "paused"}}"#).await,
        Err(QueryError::Plugin { message, .. }) if message.contains("paused")
    ));
    assert!(matches!(
        bus.query("agent-runs", r#"{"runs": {"agent": 7}}"#).await,
        Err(QueryError::Plugin { message, .. }) if message.contains("`agent`")
    ));
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_interleaved_with_events_from_several_threads_see_exactly_a_prefix() {
    let log = tempfile::tempdir().unwrap();
    let (bus, _dir) = bus_with(&["agent-runs"], log.path()).await;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..2_500u64 {
                    let run = format!("run-{}", (t * 7 + i) % 13);
                    let event = if i % 3 == 0 {
                        Event::new("tool.called", json!({ "tool": format!("t{t}-{i}") }))
                    } else {
                        Event::new(
                            "model_responded",
                            json!({ "usage": { "prompt_tokens": i, "completion_tokens": t } }),
                        )
                    };
                    bus.publish(event.with_correlation_id(run));
                    // Spread the burst over tens of milliseconds so queries land mid-stream.
                    if i % 100 == 0 {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    while threads.iter().any(|t| !t.is_finished()) {
        let a = bus.query("agent-runs", r#"{"runs": {"limit": 100}}"#).await.unwrap();
        answers.push((a.as_of_seq, a.parse::<Value>().unwrap()));
    }
    for t in threads {
        t.join().unwrap();
    }
    bus.flush().await;
    let last = bus.query("agent-runs", r#"{"runs": {"limit": 100}}"#).await.unwrap();
    assert_eq!(last.as_of_seq, Some(10_000));
    let info = bus.plugins().into_iter().find(|p| p.name == "agent-runs").unwrap();
    assert_eq!(info.stats.dropped, 0);
    answers.push((last.as_of_seq, last.parse::<Value>().unwrap()));
    assert!(answers.len() >= 2, "queries ran while events flowed");

    let all = logged(log.path(), u64::MAX);
    let mut checked_mid_stream = 0;
    for (seq, answer) in &answers {
        let Some(seq) = *seq else {
            assert_eq!(answer["runs"], json!([]));
            continue;
        };
        let native = Native::of(&all[..seq as usize]);
        let mut runs: Vec<&Value> = answer["runs"].as_array().unwrap().iter().collect();
        runs.sort_by_key(|r| r["run"].as_str().unwrap().to_owned());
        let expected: Vec<Value> = native.runs.keys().map(|id| native.run(id)).collect();
        assert_eq!(runs.len(), expected.len(), "as of {seq}");
        for (got, want) in runs.iter().zip(&expected) {
            assert_eq!(*got, want, "as of {seq}");
        }
        if seq < 10_000 {
            checked_mid_stream += 1;
        }
    }
    eprintln!("{} answers checked, {checked_mid_stream} mid-stream", answers.len());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_traps_or_spins_is_a_typed_error_and_the_plugin_keeps_its_state() {
    let dir = support::plugin_dir(&["misbehave"]);
    let bus = open(dir.path(), None).await;
    for _ in 0..3 {
        bus.emit("misbehave.noop", json!({}));
    }
    bus.flush().await;
    let seen = |a: plugbus::QueryAnswer| a.parse::<Value>().unwrap()["seen"].as_u64().unwrap();
    assert_eq!(seen(bus.query("misbehave", "{}").await.unwrap()), 3);

    match bus.query("misbehave", r#"{"do": "panic"}"#).await {
        Err(QueryError::Failed { plugin, failure }) => {
            assert_eq!(plugin, "misbehave");
            assert!(failure.to_string().contains("panic in a query"), "{failure}");
        }
        other => panic!("{other:?}"),
    }
    // Rebuilt with its state (replay of the events it kept), before the next call.
    assert_eq!(seen(bus.query("misbehave", "{}").await.unwrap()), 3);
    for (action, kind) in [("spin", "out_of_fuel"), ("memory", "memory_limit")] {
        match bus.query("misbehave", &format!(r#"{{"do": "{action}"}}"#)).await {
            Err(QueryError::Limit { failure, .. }) => assert_eq!(failure.kind(), kind, "{action}"),
            other => panic!("{action}: {other:?}"),
        }
        assert_eq!(seen(bus.query("misbehave", "{}").await.unwrap()), 3, "after {action}");
    }
    // A query may not emit; its refusal is the plugin's answer as it is.
    let emit = ask(&bus, "misbehave", r#"{"do": "emit"}"#).await;
    assert!(
        emit["emit"]
            .as_str()
            .unwrap()
            .starts_with("refused: emit is refused during a query"),
        "{emit}"
    );
    assert!(matches!(
        bus.query("misbehave", r#"{"do": "refuse"}"#).await,
        Err(QueryError::Plugin { message, .. }) if message == "misbehave refuses this query"
    ));
    // Events go on, with the state intact and no dead letters from queries.
    bus.emit("misbehave.noop", json!({}));
    bus.flush().await;
    assert_eq!(seen(bus.query("misbehave", "{}").await.unwrap()), 4);
    let info = bus.plugins().into_iter().find(|p| p.name == "misbehave").unwrap();
    assert_eq!(info.stats.query_failures, 3);
    assert_eq!(info.stats.dead_letters, 0);
    assert_eq!(info.stats.failures.total(), 0, "query failures are not event failures");
    assert!(info.stats.queries >= 7);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_errors_are_typed() {
    let dir = support::plugin_dir(&["misbehave", "agent-runs"]);
    // A stateful plugin built against 0.1.1 loads and keeps working; it has no `query`.
    support::install(dir.path(), &support::compat_cost_tracker_0_1_1(), "old-costs", "");
    let bus = open(dir.path(), None).await;
    assert_eq!(
        bus.query("nobody", "{}").await.unwrap_err(),
        QueryError::UnknownPlugin("nobody".into())
    );
    assert_eq!(
        bus.query("old-costs", "{}").await.unwrap_err(),
        QueryError::NoQueryExport("old-costs".into())
    );
    let report = bus
        .emit_and_wait(
            "model_responded",
            json!({ "usage": { "prompt_tokens": 1, "completion_tokens": 1 }, "cost_usd": 0.5 }),
        )
        .await;
    assert_eq!(report.outcome("old-costs"), Some(&plugbus::Outcome::Ok));
    let big = format!(
        r#"{{"run": "{}"}}"#,
        "x".repeat(plugbus::query::MAX_QUERY_REQUEST_BYTES)
    );
    assert!(matches!(
        bus.query("agent-runs", &big).await,
        Err(QueryError::TooLarge(_))
    ));
    assert!(matches!(
        bus.query("agent-runs", "not json").await,
        Err(QueryError::Plugin { message, .. }) if message.contains("not JSON")
    ));

    // Queries wait at most 64 deep behind a busy worker; past that, `Busy` at
    // once. Each query is polled once by hand, so all are offered while the
    // worker is still spinning on the first.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut spinning = Box::pin(bus.query("misbehave", r#"{"do": "spin"}"#));
    assert!(spinning.as_mut().poll(&mut cx).is_pending());
    let (mut waiting, mut busy) = (Vec::new(), 0);
    for _ in 0..100 {
        let mut query = Box::pin(bus.query("misbehave", "{}"));
        match query.as_mut().poll(&mut cx) {
            std::task::Poll::Pending => waiting.push(query),
            std::task::Poll::Ready(Err(QueryError::Busy(p))) => {
                assert_eq!(p, "misbehave");
                busy += 1;
            }
            std::task::Poll::Ready(other) => panic!("{other:?}"),
        }
    }
    assert!((36..=37).contains(&busy), "{busy} of 100 refused as busy");
    assert!(matches!(spinning.await, Err(QueryError::Limit { .. })));
    for query in waiting {
        query.await.unwrap();
    }

    let bus2 = bus.clone();
    bus.shutdown().await;
    assert!(matches!(
        bus2.query("agent-runs", "{}").await,
        Err(QueryError::UnknownPlugin(_) | QueryError::ShuttingDown(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_projection_is_rebuilt_from_the_log_and_runs_beside_the_buggy_one() {
    let log = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // v1 has a deliberate bug: it misses `agent.tool_called`.
    support::install(dir.path(), &support::wasm("agent-runs-v1"), "agent-runs", DEEP_QUEUE);
    let bus = open(dir.path(), Some(log.path())).await;
    for event in article_run("trip-7") {
        bus.publish(event);
    }
    bus.flush().await;
    let v1 = bus.query("agent-runs", r#"{"run": "trip-7"}"#).await.unwrap();
    assert_eq!(v1.parse::<Value>().unwrap()["tools"], json!([]), "v1's bug");

    // v2 loaded beside it with `replay = "all"`, while events keep flowing.
    let fixed = tempfile::tempdir().unwrap();
    support::install(
        fixed.path(),
        &support::wasm("agent-runs"),
        "agent-runs-v2",
        &format!("replay = \"all\"\n{DEEP_QUEUE}"),
    );
    let flowing = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            for i in 0..3_000 {
                let event = Event::new("agent.tool_called", json!({ "tool_name": format!("t{i}") }));
                bus.publish(event.with_correlation_id(format!("bulk-{}", i % 10)));
            }
        })
    };
    bus.load_plugin(&fixed.path().join("agent-runs-v2.wasm")).await.unwrap();
    flowing.join().unwrap();
    bus.flush().await;
    let v1 = bus.query("agent-runs", r#"{"run": "trip-7"}"#).await.unwrap();
    let v2 = bus.query("agent-runs-v2", r#"{"run": "trip-7"}"#).await.unwrap();
    assert_eq!(v1.as_of_seq, v2.as_of_seq, "both saw every event");
    let native = Native::of(&logged(log.path(), v2.as_of_seq.unwrap()));
    assert_eq!(v2.parse::<Value>().unwrap(), native.run("trip-7"));
    assert_eq!(
        v2.parse::<Value>().unwrap()["tools"],
        json!(["search_flights", "book_hotel"])
    );
    assert_eq!(v1.parse::<Value>().unwrap()["tools"], json!([]));
    let v2_bulk = ask(&bus, "agent-runs-v2", r#"{"run": "bulk-3"}"#).await;
    assert_eq!(v2_bulk, native.run("bulk-3"));
    assert_eq!(v2_bulk["tools"].as_array().unwrap().len(), 300);
    let last = v2.as_of_seq.unwrap();
    bus.shutdown().await;

    // `plugbus query` rebuilds the fixed version from the same log: the corrected answer.
    let cli = tempfile::tempdir().unwrap();
    support::install(cli.path(), &support::wasm("agent-runs"), "agent-runs", "");
    let out = std::process::Command::new(support::plugbus_bin())
        .args(["-q", "query", "--plugins"])
        .arg(cli.path())
        .arg("--log")
        .arg(log.path())
        .args(["agent-runs", r#"{"run": "trip-7"}"#])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["as_of_seq"], last);
    assert_eq!(printed["answer"], native.run("trip-7"));

    // Errors: exit 1 with the reason.
    let fail = |args: &[&str]| {
        let out = std::process::Command::new(support::plugbus_bin())
            .args(["-q", "query", "--plugins"])
            .arg(cli.path())
            .arg("--log")
            .arg(log.path())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(fail(&["agent-runs", r#"{"run": "nope"}"#]).contains("no run `nope`"));
    assert!(fail(&["agent-runs", "{oops"]).contains("not JSON"));
    assert!(fail(&["ghost", "{}"]).contains("no plugin named `ghost`"));
}

/// `%`-encodes everything but unreserved characters, for `?q=`.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn http_queries_answer_with_the_documented_status_codes() {
    let dir = support::plugin_dir(&["agent-runs", "misbehave", "cost-tracker"]);
    let log = tempfile::tempdir().unwrap();
    let (mut child, addr, _stderr) = support::serve_logged(dir.path(), log.path());
    let session = std::fs::read(support::workspace_root().join("examples/agent-session.jsonl")).unwrap();
    let (status, body) = support::http(&addr, "POST", "/events", &session);
    assert_eq!(status, 202, "{body}");
    let posted: Value = serde_json::from_str(&body).unwrap();
    let last_posted = posted["seqs"].as_array().unwrap().last().unwrap().as_u64().unwrap();

    // The answer reflects at least every posted event once the plugin got to them.
    let path = format!("/plugins/agent-runs/query?q={}", urlencode(r#"{"run":"run-42"}"#));
    let answer = (0..200)
        .find_map(|_| {
            let (status, body) = support::http(&addr, "GET", &path, b"");
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["as_of_seq"].as_u64() >= Some(last_posted) {
                Some(v)
            } else {
                std::thread::sleep(std::time::Duration::from_millis(20));
                None
            }
        })
        .expect("agent-runs caught up");
    assert_eq!(answer["answer"]["run"], "run-42");
    assert_eq!(answer["answer"]["status"], "completed");
    let (status, body) = support::http(&addr, "POST", "/plugins/agent-runs/query", br#"{"agents": true}"#);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["answer"]["agents"]["research-assistant"]["runs"], 1);

    let cases: &[(&str, &str, &[u8], u16, &str)] = &[
        ("POST", "/plugins/ghost/query", b"{}", 404, "unknown_plugin"),
        ("POST", "/plugins/cost-tracker/query", b"{}", 501, "no_query_export"),
        (
            "POST",
            "/plugins/agent-runs/query",
            br#"{"run": "nope"}"#,
            422,
            "plugin_error",
        ),
        ("POST", "/plugins/misbehave/query", br#"{"do": "spin"}"#, 504, "limit"),
        ("POST", "/plugins/misbehave/query", br#"{"do": "panic"}"#, 500, "failed"),
    ];
    for (method, path, body, want, kind) in cases {
        let (status, text) = support::http(&addr, method, path, body);
        assert_eq!(status, *want, "{path} {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["kind"], *kind, "{text}");
        assert!(v["error"].as_str().unwrap().len() > 10, "{text}");
    }
    // Malformed requests: 400 naming the problem; too large: 413.
    for (method, path, body) in [
        ("GET", "/plugins/agent-runs/query".to_owned(), &b""[..]),
        ("GET", "/plugins/agent-runs/query?q=%7Boops".to_owned(), b""),
        ("GET", "/plugins/agent-runs/query?q=%ZZ".to_owned(), b""),
        ("POST", "/plugins/agent-runs/query".to_owned(), b"{\"run\": "),
    ] {
        let (status, text) = support::http(&addr, method, &path, body);
        assert_eq!(status, 400, "{method} {path}: {text}");
        assert!(text.contains("error"), "{text}");
    }
    let big = format!(r#"{{"run": "{}"}}"#, "x".repeat(70_000));
    let (status, text) = support::http(&addr, "POST", "/plugins/agent-runs/query", big.as_bytes());
    assert_eq!(status, 413, "{text}");
    // A compressed body is refused by name, as POST /events refuses it.
    let (status, text) = support::http_with(
        &addr,
        "POST",
        "/plugins/agent-runs/query",
        &[("Content-Encoding", "gzip")],
        br#"{"agents": true}"#,
    );
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("content encoding gzip"), "{text}");
    // After the failed queries misbehave still answers, its state kept.
    let (status, text) = support::http(&addr, "POST", "/plugins/misbehave/query", b"{}");
    assert_eq!(status, 200, "{text}");
    let (_, plugins) = support::http(&addr, "GET", "/plugins", b"");
    let plugins: Value = serde_json::from_str(&plugins).unwrap();
    let mis = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "misbehave")
        .unwrap();
    assert_eq!(mis["stats"]["query_failures"], 2);
    let (_, metrics) = support::http(&addr, "GET", "/metrics", b"");
    assert!(
        metrics.contains(r#"plugbus_plugin_query_failures_total{plugin="misbehave"} 2"#),
        "{metrics}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A projection with `state` that runs out of query fuel is rebuilt like
/// after any trap: its last snapshot restored and the events since replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_projection_that_fails_a_query_comes_back_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // Enough fuel to look one run up, not to list 300 of them.
    support::install(
        dir.path(),
        &support::wasm("agent-runs"),
        "agent-runs",
        "[limits]\nquery_fuel = 300_000\nsnapshot_every = 100\nqueue_capacity = 4096\n",
    );
    let bus = open(dir.path(), None).await;
    for i in 0..1_050u64 {
        let event = Event::new(
            "model_responded",
            json!({ "usage": { "prompt_tokens": i, "completion_tokens": 1 } }),
        );
        bus.publish(event.with_correlation_id(format!("run-{}", i % 300)));
    }
    bus.flush().await;
    let before = bus.query("agent-runs", r#"{"run": "run-7"}"#).await.unwrap();
    match bus.query("agent-runs", r#"{"runs": {"limit": 1000}}"#).await {
        Err(QueryError::Limit { failure, .. }) => assert_eq!(failure.kind(), "out_of_fuel"),
        other => panic!("{other:?}"),
    }
    let after = bus.query("agent-runs", r#"{"run": "run-7"}"#).await.unwrap();
    assert_eq!(after.as_of_seq, before.as_of_seq);
    assert_eq!(after.parse::<Value>().unwrap(), before.parse::<Value>().unwrap());
    let info = bus.plugins().into_iter().find(|p| p.name == "agent-runs").unwrap();
    assert_eq!(info.stats.state_restored, 1, "{:?}", info.stats);
    assert!(info.stats.snapshots >= 10, "{:?}", info.stats);
    assert!(
        info.stats.replayed <= 100,
        "only the events since the snapshot: {:?}",
        info.stats
    );
    bus.shutdown().await;
}
