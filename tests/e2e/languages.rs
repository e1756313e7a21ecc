//! Plugins written in C, Python and JavaScript, built from source by
//! `make lang-plugins` with the pinned toolchains, running in the real host:
//! each sample produces the follow-up events its users rely on, and a runaway
//! loop written in each language is stopped by fuel while the emitter and a
//! healthy plugin are unaffected and the plugin serves the next event from a
//! fresh instance whose state the host rebuilt by replay.

use crate::support;

use plugbus::{Bus, Failure, Outcome};
use serde_json::{Value, json};
use support::{Recorder, plugin_dir};

/// A bus over `dir`, with the run's shared artifact cache.
async fn bus_over(dir: &std::path::Path) -> Bus {
    let bus = Bus::builder()
        .plugin_dir(dir)
        .cache_dir(support::shared_cache())
        .history(10_000)
        .build()
        .await
        .unwrap();
    assert!(bus.load_failures().is_empty(), "{:?}", bus.load_failures());
    bus
}

fn payloads(rec: &Recorder, name: &str) -> Vec<Value> {
    rec.named(name).iter().map(|e| e.payload().clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_event_counter_reports_a_table_every_n_events() {
    let dir = plugin_dir(&["event-counter"]);
    std::fs::write(
        dir.path().join("event-counter.toml"),
        "[config]\nevery = \"6\"\ntop = \"2\"\nmax_names = \"3\"\n",
    )
    .unwrap();
    let bus = bus_over(dir.path()).await;
    let tables = Recorder::attach(&bus, "stats.event_counts");
    // 6 events over 4 names; max_names = 3 sends the fourth to "other".
    for name in [
        "tool.called",
        "model_responded",
        "tool.called",
        "a\"quoted\"",
        "tool.called",
        "late.name",
    ] {
        let report = bus.emit_and_wait(name, json!({})).await;
        assert_eq!(report.outcome("event-counter"), Some(&Outcome::Ok), "{name}");
    }
    bus.flush().await;
    let got = payloads(&tables, "stats.event_counts");
    assert_eq!(
        got,
        vec![json!({
            "total": 6, "distinct": 3, "other": 1,
            "top": [{"name": "tool.called", "count": 3}, {"name": "a\"quoted\"", "count": 1}],
        })],
        "ties are broken by name; the quoted name is valid JSON"
    );
    // Its own report is not counted: the next table comes after 6 more events.
    for _ in 0..5 {
        bus.emit_and_wait("tool.called", json!({})).await;
    }
    bus.flush().await;
    assert_eq!(tables.named("stats.event_counts").len(), 1);
    bus.emit_and_wait("tool.called", json!({})).await;
    bus.flush().await;
    let got = payloads(&tables, "stats.event_counts");
    assert_eq!(got.len(), 2);
    assert_eq!(got[1]["total"], 12);
    assert_eq!(got[1]["top"][0], json!({"name": "tool.called", "count": 9}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_secret_scanner_reports_kinds_and_places_never_the_secret() {
    let dir = plugin_dir(&["secret-scanner"]);
    let bus = bus_over(dir.path()).await;
    let found = Recorder::attach(&bus, "security.secret_detected");

    let aws = "AKIAIOSFODNN7EXAMPLE";
    let openai = "sk-proj-Abc123Def456Ghi789Jkl012Mno345";
    let anthropic = "sk-ant-api03-Zyx987Wvu654Tsr321Qpo";
    let leaky = bus
        .emit_and_wait(
            "tool.result",
            json!({
                "tool": "read_file",
                "stdout": format!("aws_access_key_id = {aws}\n-----BEGIN RSA PRIVATE KEY-----\nMIIE"),
                "files": [{"env": format!("OPENAI_API_KEY={openai}")}],
            }),
        )
        .await;
    let chatty = bus
        .emit_and_wait(
            "model_responded",
            json!({"model": "m", "output": format!("Write to ops@example.org; the key is {anthropic}")}),
        )
        .await;
    let clean = bus
        .emit_and_wait(
            "tool.result",
            json!({"tool": "web_search", "stdout": "sk- is a prefix; user at host"}),
        )
        .await;
    let not_json = bus.emit_and_wait("tool.called", json!("a plain string")).await;
    for r in [&leaky, &chatty, &clean, &not_json] {
        assert_eq!(r.outcome("secret-scanner"), Some(&Outcome::Ok), "{r:?}");
    }
    bus.flush().await;

    let events = found.named("security.secret_detected");
    let got: Vec<&Value> = events.iter().map(|e| e.payload()).collect();
    assert_eq!(
        got.len(),
        2,
        "one detection per leaky event, none for clean ones: {got:?}"
    );
    assert_eq!(got[0]["event_id"], leaky.event.id());
    assert_eq!(
        got[0]["kinds"],
        json!(["aws_access_key_id", "openai_api_key", "private_key"])
    );
    assert_eq!(got[0]["locations"]["openai_api_key"], json!(["payload.files[0].env"]));
    assert_eq!(got[1]["event_id"], chatty.event.id());
    assert_eq!(
        got[1]["kinds"],
        json!(["anthropic_api_key", "email_address"]),
        "an Anthropic key is not also reported as an OpenAI one"
    );
    let text = serde_json::to_string(&got).unwrap();
    for secret in [aws, openai, anthropic, "ops@example.org", "MIIE"] {
        assert!(!text.contains(secret), "the detection leaks {secret}: {text}");
    }
    // The detection names the plugin that raised it.
    assert_eq!(events[0].source(), "secret-scanner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_latency_watch_alerts_with_a_rolling_p95() {
    let dir = plugin_dir(&["latency-watch"]);
    std::fs::write(
        dir.path().join("latency-watch.toml"),
        "[config]\nthreshold_ms = \"500\"\n\"threshold_ms.tool:search\" = \"100\"\nwindow = \"20\"\n",
    )
    .unwrap();
    let bus = bus_over(dir.path()).await;
    let alerts = Recorder::attach(&bus, "alert.latency");

    // model:m gets 1..=20 x 10 ms, then one slow call: p95 over the window of 20.
    for i in 1..=20 {
        bus.emit_and_wait("model_responded", json!({"model": "m", "latency_ms": i * 10}))
            .await;
    }
    let slow = bus
        .emit_and_wait("model_responded", json!({"model": "m", "latency_ms": 900}))
        .await;
    // The per-key threshold applies to tool:search only.
    let search = bus
        .emit_and_wait("tool.result", json!({"tool": "search", "latency_ms": 150}))
        .await;
    bus.emit_and_wait("tool.result", json!({"tool": "fetch", "latency_ms": 150}))
        .await;
    // No latency, or no key: nothing to measure, and no error.
    let r = bus.emit_and_wait("tool.called", json!({"tool": "fetch"})).await;
    assert_eq!(r.outcome("latency-watch"), Some(&Outcome::Ok));
    let r = bus.emit_and_wait("tool.result", json!({"latency_ms": 10_000})).await;
    assert_eq!(r.outcome("latency-watch"), Some(&Outcome::Ok));
    bus.flush().await;

    let got = payloads(&alerts, "alert.latency");
    assert_eq!(got.len(), 2, "{got:?}");
    // Window after the slow call: 20..=200 step 10 and 900; nearest-rank p95 is the 19th of 20.
    assert_eq!(
        got[0],
        json!({
            "key": "model:m", "latency_ms": 900, "threshold_ms": 500, "p95_ms": 200,
            "samples": 20, "event_id": slow.event.id(), "event_name": "model_responded",
        })
    );
    assert_eq!(got[1]["key"], "tool:search");
    assert_eq!(got[1]["threshold_ms"], 100);
    assert_eq!(got[1]["event_id"], search.event.id());
}

/// The runaway-loop guarantee for one language's `tokens` fixture.
async fn runaway_loop_is_stopped(plugin: &str) {
    let dir = plugin_dir(&[plugin, "token-counter"]);
    let bus = bus_over(dir.path()).await;
    let reports = Recorder::attach(&bus, "fixture.tokens");
    let usage = |p: u64, c: u64| json!({"model": "m", "usage": {"prompt_tokens": p, "completion_tokens": c}});

    for _ in 0..3 {
        let r = bus.emit_and_wait("model_responded", usage(100, 10)).await;
        assert_eq!(r.outcome(plugin), Some(&Outcome::Ok), "{r:?}");
    }
    bus.emit_and_wait("tokens.report", json!({})).await;
    // The emitter API has no error path; the loop fails the plugin alone.
    let spin = bus.emit_and_wait("tokens.spin", json!({})).await;
    match spin.outcome(plugin) {
        Some(Outcome::Failed(Failure::OutOfFuel | Failure::Deadline)) => {}
        other => panic!("{plugin}: the loop was not stopped by fuel or deadline: {other:?}"),
    }
    for _ in 0..2 {
        let r = bus.emit_and_wait("model_responded", usage(1, 2)).await;
        assert_eq!(
            r.outcome(plugin),
            Some(&Outcome::Ok),
            "{plugin} does not serve the next event"
        );
        assert_eq!(r.outcome("token-counter"), Some(&Outcome::Ok));
    }
    bus.emit_and_wait("tokens.report", json!({})).await;
    bus.flush().await;

    assert_eq!(
        payloads(&reports, "fixture.tokens"),
        vec![json!({"tokens": 330, "events": 3}), json!({"tokens": 336, "events": 5})],
        "{plugin}: a fresh instance, its state rebuilt by replaying the events before the trap"
    );
    let info = bus.plugins();
    let me = info.iter().find(|p| p.name == plugin).unwrap();
    assert_eq!(me.stats.restarts, 1);
    let healthy = info.iter().find(|p| p.name == "token-counter").unwrap();
    assert_eq!((healthy.stats.delivered, healthy.stats.ok), (5, 5));
    // The healthy plugin saw every model event, in order, around the failure.
    let seen: Vec<Value> = bus
        .history(100)
        .iter()
        .filter(|e| e.name() == "model_responded")
        .map(|e| e.payload()["usage"]["prompt_tokens"].clone())
        .collect();
    assert_eq!(seen, [100, 100, 100, 1, 1].map(Value::from));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_loop_in_c_is_stopped_and_the_plugin_recovers() {
    runaway_loop_is_stopped("tokens-c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_loop_in_python_is_stopped_and_the_plugin_recovers() {
    runaway_loop_is_stopped("tokens-py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_loop_in_javascript_is_stopped_and_the_plugin_recovers() {
    runaway_loop_is_stopped("tokens-js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interpreted_plugins_hold_what_their_manifests_allow() {
    let dir = plugin_dir(&["secret-scanner", "latency-watch", "event-counter"]);
    let bus = bus_over(dir.path()).await;
    for p in bus.plugins() {
        let mib = p.stats.memory_bytes as f64 / f64::from(1 << 20);
        // The measured footprints (docs/plugins): CPython ~12 MiB, QuickJS
        // ~1.4 MiB, C ~0.1 MiB; each well inside its cap.
        let (low, high) = match p.name.as_str() {
            "secret-scanner" => (4.0, 64.0),
            "latency-watch" => (0.5, 16.0),
            _ => (0.0, 2.0),
        };
        assert!(mib > low && mib < high, "{}: {mib:.1} MiB", p.name);
    }
}

/// Python and JavaScript plugins that export `state` (built for the
/// `stateful-observer` world): the totals they kept come back on a new bus
/// over the same log, from the snapshot taken when the first one stopped.
#[tokio::test]
async fn python_and_javascript_plugins_keep_their_state_across_restarts() {
    for plugin in ["state-py", "state-js"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(support::lang_wasm(plugin), dir.path().join(format!("{plugin}.wasm"))).unwrap();
        std::fs::write(
            dir.path().join(format!("{plugin}.toml")),
            "[limits]\nmemory_mib = 128\nfuel = 500_000_000\n",
        )
        .unwrap();
        let log = tempfile::tempdir().unwrap();
        let open = || async {
            Bus::builder()
                .plugin_dir(dir.path())
                .cache_dir(support::shared_cache())
                .log_dir(log.path())
                .build()
                .await
                .unwrap()
        };
        let bus = open().await;
        let info = bus.plugins();
        assert_eq!(info.len(), 1, "{plugin}: {:?}", bus.load_failures());
        for (p, c) in [(10, 5), (1, 2)] {
            let usage = json!({"usage": {"prompt_tokens": p, "completion_tokens": c}});
            let r = bus.emit_and_wait("model_responded", usage).await;
            assert_eq!(r.outcome(plugin), Some(&Outcome::Ok), "{plugin}: {r:?}");
        }
        bus.shutdown().await;
        assert!(
            log.path().join(format!("snapshots/{plugin}.snap")).is_file(),
            "{plugin}"
        );

        let bus = open().await;
        let reports = Recorder::attach(&bus, "fixture.tokens");
        bus.emit_and_wait("tokens.report", json!({})).await;
        bus.flush().await;
        assert_eq!(
            payloads(&reports, "fixture.tokens"),
            vec![json!({"tokens": 18, "events": 2})],
            "{plugin}: totals restored from its snapshot"
        );
        bus.shutdown().await;
    }
}

/// The first-party C and JavaScript plugins export `state`: event-counter's
/// counts and latency-watch's windows come back on a new bus over the same
/// log, from the snapshots taken when the first one stopped.
#[tokio::test]
async fn event_counter_and_latency_watch_keep_their_state_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    for plugin in ["event-counter", "latency-watch"] {
        std::fs::copy(support::lang_wasm(plugin), dir.path().join(format!("{plugin}.wasm"))).unwrap();
    }
    std::fs::write(dir.path().join("event-counter.toml"), "[config]\nevery = \"3\"\n").unwrap();
    std::fs::write(
        dir.path().join("latency-watch.toml"),
        "[limits]\nfuel = 200_000_000\n[config]\nthreshold_ms = \"1000\"\n",
    )
    .unwrap();
    let log = tempfile::tempdir().unwrap();
    let open = || async {
        let bus = Bus::builder()
            .plugin_dir(dir.path())
            .cache_dir(support::shared_cache())
            .log_dir(log.path())
            .build()
            .await
            .unwrap();
        assert!(bus.load_failures().is_empty(), "{:?}", bus.load_failures());
        bus
    };
    let call = |ms: u64| json!({ "tool": "search", "latency_ms": ms });
    let bus = open().await;
    for _ in 0..2 {
        bus.emit_and_wait("tool.called", call(10)).await;
    }
    bus.shutdown().await;

    let bus = open().await;
    let counts = Recorder::attach(&bus, "stats.event_counts");
    let alerts = Recorder::attach(&bus, "alert.latency");
    bus.emit_and_wait("tool.called", call(5000)).await;
    bus.flush().await;
    // The third event overall: event-counter's `every = 3` report fires.
    let report = payloads(&counts, "stats.event_counts");
    assert_eq!(report.len(), 1, "event-counter kept its count of 2");
    assert_eq!(report[0]["total"], 3);
    let alert = payloads(&alerts, "alert.latency");
    assert_eq!(alert.len(), 1);
    assert_eq!(
        alert[0]["samples"], 3,
        "latency-watch kept its two samples: {}",
        alert[0]
    );
    bus.shutdown().await;
}

/// A read model in each guest language (world `projection`, built as the
/// guides say): the C event-counter, and the Python and JavaScript fixtures,
/// answer queries from their state; a refusal reaches the caller as it is.
#[tokio::test]
async fn c_python_and_javascript_projections_answer_queries() {
    let dir = plugin_dir(&["event-counter", "state-py", "state-js"]);
    for plugin in ["state-py", "state-js"] {
        std::fs::write(
            dir.path().join(format!("{plugin}.toml")),
            "[limits]\nmemory_mib = 128\nfuel = 500_000_000\nquery_fuel = 500_000_000\n",
        )
        .unwrap();
    }
    let bus = bus_over(dir.path()).await;
    for (p, c) in [(10, 5), (1, 2)] {
        bus.emit(
            "model_responded",
            json!({"usage": {"prompt_tokens": p, "completion_tokens": c}}),
        );
    }
    bus.emit("tool.called", json!({}));
    bus.flush().await;
    for plugin in ["state-py", "state-js"] {
        let answer = bus.query(plugin, r#"{"totals": true}"#).await.unwrap();
        assert_eq!(
            answer.parse::<Value>().unwrap(),
            json!({"tokens": 18, "events": 2}),
            "{plugin}"
        );
        assert!(answer.as_of_seq.is_some(), "{plugin}");
        match bus.query(plugin, "{}").await {
            Err(plugbus::QueryError::Plugin { message, .. }) => {
                assert!(message.contains(r#"ask {"totals": true}"#), "{plugin}: {message}")
            }
            other => panic!("{plugin}: {other:?}"),
        }
    }
    let table = bus
        .query("event-counter", r#"{"top": 1}"#)
        .await
        .unwrap()
        .parse::<Value>()
        .unwrap();
    assert_eq!(table["total"], 3, "{table}");
    assert_eq!(table["distinct"], 2, "{table}");
    assert_eq!(
        table["top"],
        json!([{"name": "model_responded", "count": 2}]),
        "{table}"
    );
    bus.shutdown().await;
}

/// The host tells each plugin's language from what its toolchain left in
/// the component (the interpreters' runtimes are compiled from C and Rust,
/// and a C plugin carries a Rust WASI adapter: neither may mislead it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_plugin_reports_the_language_it_was_written_in() {
    let dir = plugin_dir(&["cost-tracker", "event-counter", "secret-scanner", "latency-watch"]);
    let bus = bus_over(dir.path()).await;
    let mut languages: Vec<(String, Option<&str>)> = bus.plugins().into_iter().map(|p| (p.name, p.language)).collect();
    languages.sort();
    assert_eq!(
        languages,
        [
            ("cost-tracker".to_owned(), Some("Rust")),
            ("event-counter".to_owned(), Some("C")),
            ("latency-watch".to_owned(), Some("JavaScript")),
            ("secret-scanner".to_owned(), Some("Python")),
        ]
    );
    for p in bus.plugins() {
        let on_disk = std::fs::metadata(&p.path).unwrap().len();
        assert_eq!(p.size, on_disk, "{}", p.name);
    }
    bus.shutdown().await;
}
