//! Loading plugins: bad files and manifests are refused with a clear error
//! naming the file while the others load; load, unload, and configuration.

use crate::support;

use plugbus::{Bus, Error, LoadErrorKind, Outcome, PluginState};
use serde_json::json;
use support::{Recorder, plugin_dir, wasm};

#[tokio::test]
async fn a_missing_plugin_directory_is_a_clear_error() {
    let err = Bus::builder()
        .plugin_dir("/no/such/plugbus-dir")
        .build()
        .await
        .expect_err("must fail");
    assert!(matches!(err, Error::PluginDir { .. }));
    assert!(err.to_string().contains("/no/such/plugbus-dir"), "{err}");
}

#[tokio::test]
async fn bad_plugins_are_refused_by_name_and_the_rest_load() {
    let dir = plugin_dir(&["console-logger", "cost-tracker"]);
    let d = dir.path();
    // Random bytes, an empty file, a core module, a component of another world.
    std::fs::write(
        d.join("random.wasm"),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(d.join("empty.wasm"), b"").unwrap();
    std::fs::write(d.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::copy(wasm("wrong-world"), d.join("wrong-world.wasm")).unwrap();
    std::fs::write(
        d.join("truncated.wasm"),
        &std::fs::read(wasm("console-logger")).unwrap()[..5000],
    )
    .unwrap();
    // A healthy plugin with a broken manifest is not loaded either.
    std::fs::write(d.join("cost-tracker.toml"), "[limits]\nfule = 5\n").unwrap();
    // Entries named like plugins that are no file: each reported, not
    // skipped without a word.
    std::fs::create_dir(d.join("folder.wasm")).unwrap();
    std::os::unix::fs::symlink(d.join("gone"), d.join("dangling.wasm")).unwrap();

    let bus = Bus::builder().plugin_dir(d).build().await.unwrap();
    let loaded: Vec<String> = bus.plugins().into_iter().map(|p| p.name).collect();
    assert_eq!(loaded, ["console-logger"]);
    let failures = bus.load_failures();
    let reason = |file: &str| {
        failures
            .iter()
            .find(|f| f.path.ends_with(file))
            .unwrap_or_else(|| panic!("{file} not reported: {failures:?}"))
            .reason
            .clone()
    };
    assert!(reason("random.wasm").contains("not a WebAssembly file"));
    assert!(reason("empty.wasm").contains("not a WebAssembly file"));
    assert!(reason("core.wasm").contains("core WebAssembly module"));
    let wrong = reason("wrong-world.wasm");
    assert!(
        wrong.contains("not a plugbus observer") && wrong.contains("fixture:other/counter"),
        "{wrong}"
    );
    assert!(reason("truncated.wasm").contains("invalid component"));
    let manifest = reason("cost-tracker.wasm");
    assert!(
        manifest.contains("cost-tracker.toml") && manifest.contains("fule"),
        "{manifest}"
    );
    assert!(reason("folder.wasm").contains("not a regular file (a directory)"));
    assert!(reason("dangling.wasm").contains("No such file"));
    assert_eq!(failures.len(), 8);

    // The survivor works.
    let report = bus.emit_and_wait("anything", json!({})).await;
    assert_eq!(report.outcome("console-logger"), Some(&Outcome::Ok));
}

#[tokio::test]
async fn load_plugin_reports_errors_with_the_path() {
    let bus = Bus::builder().build().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let err = bus.load_plugin(&path).await.unwrap_err();
    assert!(matches!(err.kind, LoadErrorKind::CoreModule));
    assert!(err.to_string().contains("core.wasm"), "{err}");
    let err = bus.load_plugin(dir.path().join("absent.wasm")).await.unwrap_err();
    assert!(matches!(err.kind, LoadErrorKind::Io(_)), "{err}");
}

#[tokio::test]
async fn plugins_load_and_unload_at_run_time() {
    let bus = Bus::builder().build().await.unwrap();
    let info = bus.load_plugin(wasm("misbehave")).await.unwrap();
    assert_eq!((info.name.as_str(), info.state), ("misbehave", PluginState::Ready));
    assert_eq!(info.subscriptions, ["misbehave.*"]);
    let err = bus.load_plugin(wasm("misbehave")).await.unwrap_err();
    assert!(matches!(err.kind, LoadErrorKind::AlreadyLoaded(_)));

    for _ in 0..5 {
        bus.emit("misbehave.ok", json!({}));
    }
    assert!(bus.unload_plugin("misbehave").await, "unload drains the queue first");
    assert!(!bus.unload_plugin("misbehave").await);
    assert!(bus.plugins().is_empty());
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert!(report.deliveries.is_empty(), "an unloaded plugin receives nothing");
}

#[tokio::test]
async fn unloading_finishes_queued_events() {
    let bus = Bus::builder().build().await.unwrap();
    bus.load_plugin(wasm("misbehave")).await.unwrap();
    let counts = Recorder::attach(&bus, "fixture.count");
    for _ in 0..50 {
        bus.emit("misbehave.count", json!({}));
    }
    bus.unload_plugin("misbehave").await;
    assert_eq!(counts.events().len(), 50, "every queued event ran before unloading");
}

#[tokio::test]
async fn manifest_config_and_subscriptions_reach_the_plugin() {
    let dir = plugin_dir(&["cost-tracker"]);
    std::fs::write(
        dir.path().join("cost-tracker.toml"),
        "subscriptions = [\"llm.response\"]\n[config]\nbudget_usd = \"0.10\"\n",
    )
    .unwrap();
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    assert_eq!(bus.plugins()[0].subscriptions, ["llm.response"]);
    let alerts = Recorder::attach(&bus, "budget_exceeded");
    let call = json!({ "model": "m", "usage": { "prompt_tokens": 10, "completion_tokens": 5 }, "cost_usd": 0.04 });
    for _ in 0..5 {
        bus.publish(plugbus::Event::new("llm.response", call.clone()).with_correlation_id("run-3"));
    }
    bus.emit("model_responded", call.clone()); // no longer subscribed
    bus.flush().await;
    let alerts = alerts.events();
    assert_eq!(alerts.len(), 1, "budget_exceeded is emitted once");
    let a = &alerts[0];
    assert_eq!((a.source(), a.correlation_id()), ("cost-tracker", Some("run-3")));
    assert_eq!(a.payload()["calls"], 3);
    assert_eq!(a.payload()["tokens"], 45);
    assert_eq!(bus.plugins()[0].stats.delivered, 5);
}

#[tokio::test]
async fn malformed_payloads_are_guest_errors_not_crashes() {
    let dir = plugin_dir(&["cost-tracker"]);
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    let report = bus.emit_and_wait("model_responded", json!({ "usage": "lots" })).await;
    match report.outcome("cost-tracker") {
        Some(Outcome::Error(msg)) => assert!(msg.contains("bad payload"), "{msg}"),
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_component_built_for_another_wit_version_is_refused() {
    let returns_ok = "(i32.store8 (i32.const 8) (i32.const 0)) (i32.const 8)";
    let dir = tempfile::tempdir().unwrap();
    for version in ["0.9.0", "1.0.0"] {
        let component = support::component_from_wat(&support::wat_observer("x", returns_ok), version);
        std::fs::write(
            dir.path().join(format!("v{}.wasm", version.replace('.', "_"))),
            component,
        )
        .unwrap();
    }
    // The same WAT built for 0.1.0 to 0.1.3 is accepted: one semver
    // track on wasmtime; the refusal is about the version alone.
    for version in ["0.1.0", "0.1.1", "0.1.2", "0.1.3"] {
        let ok = support::component_from_wat(&support::wat_observer("x", returns_ok), version);
        std::fs::write(dir.path().join(format!("v{}.wasm", version.replace('.', "_"))), ok).unwrap();
    }
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    let loaded: Vec<String> = bus.plugins().into_iter().map(|p| p.name).collect();
    assert_eq!(loaded, ["v0_1_0", "v0_1_1", "v0_1_2", "v0_1_3"]);
    let failures = bus.load_failures();
    assert_eq!(failures.len(), 2);
    for f in failures {
        assert!(
            f.reason.contains("not a plugbus observer") && f.reason.contains("plugbus:observer/handler@"),
            "{f:?}"
        );
    }
    let report = bus.emit_and_wait("x", json!({})).await;
    assert_eq!(report.outcome("v0_1_0"), Some(&Outcome::Ok));
    assert_eq!(report.outcome("v0_1_1"), Some(&Outcome::Ok));
    assert_eq!(report.outcome("v0_1_2"), Some(&Outcome::Ok));
}

/// SECURITY.md promises wasmtime >= 48.0.4 (RUSTSEC-2026-0314..0327). The
/// advisory database is out of reach from CI here, so the floor itself is
/// checked against what Cargo.lock actually resolved.
#[test]
fn the_locked_wasmtime_is_at_least_the_advisory_floor() {
    let lock = std::fs::read_to_string(support::workspace_root().join("Cargo.lock")).unwrap();
    for krate in ["wasmtime", "wasmtime-wasi"] {
        let header = format!("name = \"{krate}\"\nversion = \"");
        let at = lock
            .find(&header)
            .unwrap_or_else(|| panic!("{krate} not in Cargo.lock"));
        let version: Vec<u64> = lock[at + header.len()..]
            .split('"')
            .next()
            .unwrap()
            .split('.')
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(
            version.as_slice() >= [48, 0, 4].as_slice(),
            "{krate} {version:?} is below 48.0.4"
        );
        assert_eq!(version[0], 48, "{krate}: the host is written against the 48 LTS line");
    }
}
