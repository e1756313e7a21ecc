//! Each isolation guarantee, proven with a plugin that really misbehaves:
//! the emitter gets no error, healthy plugins see every event in order, the
//! failure is classified, the faulty plugin is rebuilt and serves the next
//! event, and nothing escapes the sandbox.

use crate::support;

use std::sync::{Arc, Mutex};

use plugbus::{Bus, Failure, Outcome};
use serde_json::json;
use support::{Recorder, audit_lines, plugin_dir};

/// The `seen` counter the fixture reports for a fresh `misbehave.count`.
async fn fixture_count(bus: &Bus, rec: &Recorder) -> u64 {
    let report = bus.emit_and_wait("misbehave.count", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok), "{report:?}");
    let last = rec.named("fixture.count").pop().expect("fixture.count emitted");
    last.payload()["seen"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_misbehaviour_fails_alone_and_the_plugin_recovers() {
    let dir = plugin_dir(&["audit-log", "console-logger", "misbehave"]);
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let sink = hooked.clone();
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .history(10_000)
        .on_failure(move |e, handler, f| {
            sink.lock()
                .unwrap()
                .push((e.name().to_owned(), handler.to_owned(), f.clone()))
        })
        .build()
        .await
        .unwrap();
    assert!(bus.load_failures().is_empty(), "{:?}", bus.load_failures());
    let counts = Recorder::attach(&bus, "fixture.count");

    type Check = fn(&Failure) -> bool;
    let cases: [(&str, Check); 6] = [
        (
            "panic",
            |f| matches!(f, Failure::Panic(m) if m.contains("misbehave asked to panic")),
        ),
        ("unreachable", |f| matches!(f, Failure::Trap(_))),
        ("spin", |f| *f == Failure::OutOfFuel),
        ("sleep", |f| *f == Failure::Deadline),
        ("memory", |f| *f == Failure::MemoryLimit),
        ("stack", |f| *f == Failure::StackOverflow),
    ];
    // Build up state in the instance first, so losing it would be visible.
    assert_eq!(fixture_count(&bus, &counts).await, 1);
    assert_eq!(fixture_count(&bus, &counts).await, 2);
    for (i, (action, expected)) in cases.iter().enumerate() {
        let name = format!("misbehave.{action}");
        // The emitter API has no error path: `emit` returns the event.
        let report = bus.emit_and_wait(&name, json!({ "case": action })).await;
        match report.outcome("misbehave") {
            Some(Outcome::Failed(f)) => assert!(expected(f), "{action}: wrong classification {f:?}"),
            other => panic!("{action}: expected a failure, got {other:?}"),
        }
        for healthy in ["audit-log", "console-logger"] {
            assert_eq!(
                report.outcome(healthy),
                Some(&Outcome::Ok),
                "{action}: {healthy} affected"
            );
        }
        // A fresh instance handles the next event, its state rebuilt by
        // replaying what the old one handled, without the failing event:
        // the two counts before, one more after each case, and this one.
        assert_eq!(
            fixture_count(&bus, &counts).await,
            3 + i as u64,
            "{action}: state not rebuilt"
        );
        let info = bus.plugins().into_iter().find(|p| p.name == "misbehave").unwrap();
        assert_eq!(info.stats.restarts, i as u64 + 1, "{action}");
        assert_eq!(info.stats.state_restored, i as u64 + 1, "{action}");
        assert_eq!(info.stats.dead_letters, i as u64 + 1, "{action}");
    }
    bus.flush().await;

    let stats = bus.plugins().into_iter().find(|p| p.name == "misbehave").unwrap().stats;
    let f = &stats.failures;
    assert_eq!(
        (
            f.panic,
            f.trap,
            f.out_of_fuel,
            f.deadline,
            f.memory_limit,
            f.stack_overflow
        ),
        (1, 1, 1, 1, 1, 1)
    );
    assert_eq!(stats.ok + stats.errors + f.total(), stats.delivered);
    assert_eq!(stats.dropped, 0);

    let hooked = hooked.lock().unwrap().clone();
    assert_eq!(hooked.len(), cases.len(), "on_failure saw every failure: {hooked:?}");
    assert!(hooked.iter().all(|(_, handler, _)| handler == "misbehave"));

    // Healthy plugins received every event, in order, exactly once. The
    // history records each event before any handler or queue sees it, so it
    // is the publish order (a native recorder would race with follow-ups
    // that plugin workers publish from other threads).
    let emitted: Vec<String> = bus.history(10_000).iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(emitted.len(), 2 * 2 + cases.len() * 3);
    let audited: Vec<String> = audit_lines(dir.path())
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(audited, emitted);
    let logger = bus
        .plugins()
        .into_iter()
        .find(|p| p.name == "console-logger")
        .unwrap()
        .stats;
    assert_eq!(
        (logger.delivered, logger.ok),
        (emitted.len() as u64, emitted.len() as u64)
    );
    bus.shutdown().await;
}

#[tokio::test]
async fn a_guest_error_keeps_the_instance_and_its_state() {
    let dir = plugin_dir(&["misbehave"]);
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    let counts = Recorder::attach(&bus, "fixture.count");
    assert_eq!(fixture_count(&bus, &counts).await, 1);
    let report = bus.emit_and_wait("misbehave.error", json!({})).await;
    assert_eq!(
        report.outcome("misbehave"),
        Some(&Outcome::Error("asked to fail".into()))
    );
    assert_eq!(fixture_count(&bus, &counts).await, 3, "state survives a returned error");
    let stats = &bus.plugins()[0].stats;
    assert_eq!((stats.errors, stats.restarts, stats.failures.total()), (1, 0, 0));
    assert_eq!(stats.last_error.as_deref(), Some("asked to fail"));
}

#[tokio::test]
async fn an_emit_storm_is_capped_by_the_per_event_quota() {
    let dir = plugin_dir(&["misbehave"]);
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    let storm = Recorder::attach(&bus, "fixture.storm");
    let report = bus.emit_and_wait("misbehave.storm", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
    assert_eq!(
        storm.events().len(),
        plugbus::Limits::default().emits_per_event as usize
    );
    assert!(storm.events().iter().all(|e| e.source() == "misbehave"));
}

#[tokio::test]
async fn a_plugin_emitting_to_itself_stops_at_the_cascade_depth() {
    let dir = plugin_dir(&["misbehave"]);
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .history(100)
        .build()
        .await
        .unwrap();
    let root = bus.publish(plugbus::Event::new("misbehave.cascade", json!({})).with_correlation_id("run-9"));
    bus.flush().await;
    // The history is in publish order; a native recorder could see a
    // follow-up (published from the plugin's worker) before its parent.
    let events: Vec<_> = bus
        .history(100)
        .into_iter()
        .filter(|e| e.name() == "misbehave.cascade")
        .collect();
    assert_eq!(events.len(), 1 + plugbus::MAX_CASCADE_DEPTH as usize);
    assert_eq!(events[0].id(), root.id());
    for (depth, e) in events.iter().enumerate() {
        assert_eq!(e.depth() as usize, depth);
        assert_eq!(e.correlation_id(), Some("run-9"), "follow-ups keep the correlation id");
    }
    let stats = &bus.plugins()[0].stats;
    assert_eq!((stats.ok, stats.failures.total()), (events.len() as u64, 0));
}

#[tokio::test]
async fn a_log_flood_is_truncated_and_the_plugin_keeps_working() {
    let dir = plugin_dir(&["misbehave"]);
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    let report = bus.emit_and_wait("misbehave.logflood", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
}

#[tokio::test]
async fn sandbox_escape_attempts_fail_inside_the_guest() {
    let marker = std::path::Path::new("/tmp/plugbus-escape");
    let _ = std::fs::remove_file(marker);
    let dir = plugin_dir(&["misbehave"]);
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    let reports = Recorder::attach(&bus, "fixture.escape");
    let report = bus.emit_and_wait("misbehave.escape", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
    let r = reports.events().pop().expect("escape report").payload().clone();
    for attempt in ["read_passwd", "list_root", "tcp_connect", "dns_lookup", "write_tmp"] {
        let result = r[attempt].as_str().unwrap();
        assert!(result.starts_with("denied"), "{attempt}: {result}");
    }
    assert_eq!(r["env_vars"], 0, "no environment variables leak in");
    assert_eq!(r["args"], 0);
    assert!(!marker.exists(), "the guest wrote to the host's /tmp");
}

#[tokio::test]
async fn a_manifest_can_tighten_limits_for_one_plugin() {
    let dir = plugin_dir(&["misbehave", "console-logger"]);
    std::fs::write(
        dir.path().join("misbehave.toml"),
        "[limits]\nmemory_mib = 4\ndeadline_ms = 10\nfuel = 1000000\n",
    )
    .unwrap();
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    let report = bus.emit_and_wait("misbehave.memory", json!({})).await;
    assert_eq!(
        report.outcome("misbehave"),
        Some(&Outcome::Failed(Failure::MemoryLimit))
    );
    let report = bus.emit_and_wait("misbehave.spin", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Failed(Failure::OutOfFuel)));
    let report = bus.emit_and_wait("misbehave.sleep", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Failed(Failure::Deadline)));
    assert_eq!(report.outcome("console-logger"), Some(&Outcome::Ok));
}

#[tokio::test]
async fn a_full_queue_drops_for_that_plugin_only_and_counts_it() {
    let dir = plugin_dir(&["misbehave", "console-logger"]);
    std::fs::write(dir.path().join("misbehave.toml"), "[limits]\nqueue_capacity = 2\n").unwrap();
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    // Each `sleep` holds the fixture for its whole deadline, so its queue of
    // two fills while the emitter carries on.
    for _ in 0..10 {
        bus.emit("misbehave.sleep", json!({}));
    }
    bus.flush().await;
    let by_name = |n: &str| bus.plugins().into_iter().find(|p| p.name == n).unwrap().stats;
    let fixture = by_name("misbehave");
    assert!(fixture.dropped > 0, "{fixture:?}");
    assert_eq!(fixture.delivered + fixture.dropped, 10);
    assert_eq!(fixture.failures.deadline, fixture.delivered);
    let logger = by_name("console-logger");
    assert_eq!((logger.delivered, logger.dropped), (10, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_up_never_reaches_a_plugin_before_its_parent() {
    // misbehave is registered first, so it gets each parent before
    // audit-log does and publishes its follow-up from another thread at once.
    let dir = plugin_dir(&["audit-log", "misbehave"]);
    let bus = Bus::builder().history(10_000).build().await.unwrap();
    bus.load_plugin(dir.path().join("misbehave.wasm")).await.unwrap();
    bus.load_plugin(dir.path().join("audit-log.wasm")).await.unwrap();
    for _ in 0..300 {
        bus.emit("misbehave.count", json!({}));
    }
    bus.flush().await;
    let published: Vec<String> = bus.history(10_000).iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(published.len(), 600);
    let audited: Vec<String> = audit_lines(dir.path())
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(audited, published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plugins_answering_each_other_stop_at_the_cascade_depth() {
    let dir = tempfile::tempdir().unwrap();
    for (name, from, to) in [
        ("ping", "ping.relay", "pong.relay"),
        ("pong", "pong.relay", "ping.relay"),
    ] {
        std::fs::copy(support::wasm("misbehave"), dir.path().join(format!("{name}.wasm"))).unwrap();
        std::fs::write(
            dir.path().join(format!("{name}.toml")),
            format!("subscriptions = [\"{from}\"]\n[config]\nrelay_to = \"{to}\"\n"),
        )
        .unwrap();
    }
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .history(100)
        .build()
        .await
        .unwrap();
    bus.emit("ping.relay", json!({}));
    bus.flush().await;
    // Publish order, from the history (see the self-cascade test).
    let names: Vec<String> = bus
        .history(100)
        .iter()
        .map(|e| e.name().to_owned())
        .filter(|n| n.ends_with(".relay"))
        .collect();
    assert_eq!(names.len(), 1 + plugbus::MAX_CASCADE_DEPTH as usize, "{names:?}");
    assert!(
        names
            .iter()
            .enumerate()
            .all(|(i, n)| n == if i % 2 == 0 { "ping.relay" } else { "pong.relay" })
    );
    for p in bus.plugins() {
        assert_eq!(
            p.stats.failures.total(),
            0,
            "{}: refusing the emit is not a failure",
            p.name
        );
    }
}

#[tokio::test]
async fn a_table_bomb_is_stopped_and_the_plugin_recovers() {
    // Grows a table by 64k entries until the host refuses, then traps.
    let body = r#"(loop $grow
      (br_if $grow (i32.ne (table.grow $t (ref.null func) (i32.const 65536)) (i32.const -1))))
    unreachable"#;
    let component = support::component_from_wat(&support::wat_observer("bomb.table", body), "0.1.0");
    let dir = plugin_dir(&["console-logger"]);
    std::fs::write(dir.path().join("table-bomb.wasm"), component).unwrap();
    let bus = Bus::builder().plugin_dir(dir.path()).build().await.unwrap();
    assert_eq!(bus.plugins().len(), 2, "{:?}", bus.load_failures());
    for round in 0..3 {
        let report = bus.emit_and_wait("bomb.table", json!({})).await;
        assert!(
            matches!(report.outcome("table-bomb"), Some(Outcome::Failed(Failure::Trap(_)))),
            "round {round}: {report:?}"
        );
        assert_eq!(report.outcome("console-logger"), Some(&Outcome::Ok));
    }
    let p = bus.plugins().into_iter().find(|p| p.name == "table-bomb").unwrap();
    assert_eq!((p.stats.failures.trap, p.stats.restarts), (3, 2));
}

/// A hostile plugin returning an 8 MiB `Err` on every event: the host keeps,
/// logs and reports at most 4 KiB of it (marked as truncated), and the run
/// report stays small.
#[test]
fn an_eight_mib_error_message_is_capped_everywhere() {
    let dir = plugin_dir(&["misbehave"]);
    // Reading two 8 MiB answers out of the guest can take the debug build
    // longer than the 100 ms deadline (1 run in 10 on a 2-core machine,
    // then `deadline exceeded` is the last error): the deadline out of
    // reach, as this test is about the error's size.
    std::fs::write(dir.path().join("misbehave.toml"), "[limits]\ndeadline_ms = 10000\n").unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"name\":\"misbehave.bigerror\"}\n{\"name\":\"misbehave.bigerror\"}\n",
    )
    .unwrap();
    let log = dir.path().join("log");
    let out = std::process::Command::new(support::plugbus_bin())
        .args(["run", "--report", "json", "--plugins"])
        .arg(dir.path())
        .arg("--log")
        .arg(&log)
        .arg(&events)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.len() < 64 << 10,
        "stderr holds {} bytes for two errors",
        out.stderr.len()
    );
    assert!(out.stdout.len() < 64 << 10, "the report is {} bytes", out.stdout.len());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last_error = report["plugins"][0]["last_error"].as_str().unwrap();
    assert!(
        last_error.len() <= plugbus::text::MAX_GUEST_TEXT + 64,
        "{}",
        last_error.len()
    );
    assert!(
        last_error.ends_with("bytes truncated]"),
        "the cut is marked: {last_error:.300}"
    );
    // Nothing the guest said reaches the log either: its two events are 2 frames of a few bytes.
    let stats = plugbus::LogStats::read(&log).unwrap();
    assert!(stats.bytes < 4096, "{stats:?}");
}

/// A granted directory is pinned when the plugin loads (its canonical path
/// and its identity): a directory moved away and replaced by a symlink to
/// somewhere else after the policy allowed it is not granted to the next
/// instance, which once preopened wherever the symlink led.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_directory_swapped_after_the_checks_is_not_granted_again() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path().canonicalize().unwrap();
    let (sub, old, elsewhere) = (
        root.join("allowed/sub"),
        root.join("allowed/sub.old"),
        root.join("elsewhere"),
    );
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    let plugins = root.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    // The fixture's `escape` writes /tmp/plugbus-escape: here, into the grant.
    support::install(
        &plugins,
        &support::wasm("misbehave"),
        "misbehave",
        &format!(
            "[limits]\nfuel = 1000000\n[[dirs]]\nhost = \"{}\"\nguest = \"/tmp\"\nwritable = true\n",
            sub.display()
        ),
    );
    let policy = root.join("policy.toml");
    std::fs::write(&policy, "[default]\ndirs = [{ path = \"allowed\", writable = true }]\n").unwrap();
    let bus = Bus::builder()
        .plugin_dir(&plugins)
        .policy(&policy)
        .build()
        .await
        .unwrap();
    assert!(bus.load_failures().is_empty(), "{:?}", bus.load_failures());
    let escape = |bus: Bus| async move { bus.emit_and_wait("misbehave.escape", json!({})).await };
    let report = escape(bus.clone()).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
    assert!(sub.join("plugbus-escape").is_file(), "the grant is written to");

    std::fs::rename(&sub, &old).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &sub).unwrap();
    // A trap: the next event gets a new instance.
    let report = bus.emit_and_wait("misbehave.spin", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Failed(Failure::OutOfFuel)));
    let report = escape(bus.clone()).await;
    match report.outcome("misbehave") {
        Some(Outcome::Failed(Failure::Host(why))) => {
            assert!(why.contains(&sub.display().to_string()), "{why}")
        }
        other => panic!("the swapped directory was granted: {other:?}"),
    }
    assert!(
        !elsewhere.join("plugbus-escape").exists(),
        "the plugin wrote where the symlink led"
    );

    // The directory checked at load, back in place, is granted again.
    std::fs::remove_file(&sub).unwrap();
    std::fs::rename(&old, &sub).unwrap();
    let report = escape(bus.clone()).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
    bus.shutdown().await;
}

/// A plugin's follow-ups are published once its call has returned, so a
/// slow native handler on one runs on the plugin's thread but not on its
/// deadline. Before, a plugin called once per event published each
/// follow-up inside its `emit`, where the native handler ran: misbehave
/// (`max_batch = 1`, a 100 ms deadline) failed with `deadline` behind a
/// 300 ms handler, and was dead-lettered for someone else's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_native_handler_on_a_follow_up_is_not_the_plugins_time() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "[limits]\nmax_batch = 1\ndeadline_ms = 100\n";
    support::install(dir.path(), &support::wasm("misbehave"), "misbehave", manifest);
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .cache_dir(support::shared_cache())
        .build()
        .await
        .unwrap();
    let rec = Recorder::attach(&bus, "fixture.count");
    bus.on("fixture.count", |_| {
        std::thread::sleep(std::time::Duration::from_millis(300))
    })
    .unwrap();
    let report = bus.emit_and_wait("misbehave.count", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok), "{report:?}");
    // Published before the outcome was reported.
    assert_eq!(rec.named("fixture.count").len(), 1);
    let stats = bus.plugins().into_iter().find(|p| p.name == "misbehave").unwrap().stats;
    assert_eq!(stats.failures.total(), 0, "{stats:?}");
    bus.shutdown().await;
}
