//! Batched delivery (WIT 0.1.3 `batch-handler`): a plugin that exports
//! `on-events` gets the events already queued in one call, and nothing a
//! user can see differs from one call per event: order, outcomes,
//! counters, follow-ups (payloads, ids, correlation), dead letters, replay
//! output. Each test runs the same events through a batched copy and an
//! unbatched one (`max_batch = 1`) and compares.
//!
//! The tests run on a current-thread runtime: the events are all queued
//! before a worker runs, so batches form every time (a multi-thread
//! runtime would race the emitter against the worker).

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;

use plugbus::{Bus, PluginStats, Replay};
use serde_json::{Value, json};
use support::{Recorder, install, wasm};

/// The actions of the misbehave fixture a random stream draws from, with
/// their weights: follow-ups that depend on the plugin's state (`count`)
/// and on the event (`clock`), guest errors, and traps (the poison events).
const ACTIONS: &[(&str, u32)] = &[
    ("ok", 30),
    ("count", 30),
    ("clock", 15),
    ("error", 10),
    ("panic", 8),
    ("unreachable", 7),
];

/// A small deterministic generator (xorshift), so a failing seed can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn action(&mut self) -> &'static str {
        let total: u32 = ACTIONS.iter().map(|(_, w)| w).sum();
        let mut pick = (self.next() % u64::from(total)) as u32;
        for (action, weight) in ACTIONS {
            if pick < *weight {
                return action;
            }
            pick -= weight;
        }
        unreachable!("the weights cover every pick")
    }
}

/// `misbehave` installed twice: `batched` (the default `max_batch`) and
/// `single` (`max_batch = 1`); neither is ever quarantined.
fn pair(dir: &Path) {
    let misbehave = wasm("misbehave");
    install(dir, &misbehave, "batched", "[limits]\nquarantine_after = 0\n");
    install(
        dir,
        &misbehave,
        "single",
        "[limits]\nquarantine_after = 0\nmax_batch = 1\n",
    );
}

/// `n` events for the `tokens` fixtures: `model_responded` with `i` prompt
/// tokens at place `i`, except a `tokens.spin` (a runaway event) at `spin`
/// and a `tokens.report` at each of `reports`.
fn emit_tokens(bus: &Bus, n: u64, spin: u64, reports: &[u64]) {
    for i in 0..n {
        let name = match i {
            _ if i == spin => "tokens.spin",
            _ if reports.contains(&i) => "tokens.report",
            _ => "model_responded",
        };
        bus.emit(name, json!({ "usage": { "prompt_tokens": i, "completion_tokens": 1 } }));
    }
}

/// A bus on the plugins in `dir`, with the tests' shared compile cache.
async fn open(dir: &Path) -> Bus {
    Bus::builder()
        .plugin_dir(dir)
        .cache_dir(support::shared_cache())
        .build()
        .await
        .unwrap()
}

fn stats(bus: &Bus, name: &str) -> PluginStats {
    bus.plugins().into_iter().find(|p| p.name == name).unwrap().stats
}

/// Per source plugin, its follow-ups in publish order: (name, correlation
/// id, payload). A plugin's randomness is seeded by its name (so `hash` and
/// `order` differ between two names by design): those two fields are left
/// out here, and compared by the replay test, which keeps the name.
fn follow_ups(recorder: &Recorder) -> BTreeMap<String, Vec<(String, Option<String>, Value)>> {
    let mut by_source: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for e in recorder.events() {
        let mut payload = e.payload().clone();
        if let Some(fields) = payload.as_object_mut() {
            fields.remove("hash");
            fields.remove("order");
        }
        by_source.entry(e.source().to_owned()).or_default().push((
            e.name().to_owned(),
            e.correlation_id().map(str::to_owned),
            payload,
        ));
    }
    by_source
}

#[tokio::test]
async fn a_batched_plugin_is_indistinguishable_from_one_call_per_event() {
    for seed in [0x9E37_79B9_7F4A_7C15u64, 7, 1_000_003, 0xDEAD_BEEF] {
        let dir = tempfile::tempdir().unwrap();
        pair(dir.path());
        let bus = open(dir.path()).await;
        let recorder = Recorder::attach(&bus, "fixture.*");
        let mut rng = Rng(seed);
        let mut actions = Vec::new();
        // All queued before either worker runs (current-thread runtime).
        for i in 0..300 {
            let action = rng.action();
            actions.push(action);
            let event = plugbus::Event::new(format!("misbehave.{action}"), json!({ "i": i }))
                .with_correlation_id(format!("run-{}", rng.next() % 5));
            bus.publish(event);
        }
        bus.flush().await;

        let (batched, single) = (stats(&bus, "batched"), stats(&bus, "single"));
        assert!(
            batched.batches > 0 && batched.batched > 2 * batched.batches,
            "seed {seed}: the batched copy took its events in batches: {batched:?}"
        );
        assert_eq!(single.batches, 0, "seed {seed}");
        let counters = |s: &PluginStats| {
            (
                s.delivered,
                s.ok,
                s.errors,
                s.failures.panic,
                s.failures.trap,
                s.dead_letters,
                s.dropped,
            )
        };
        let traps = actions
            .iter()
            .filter(|a| matches!(**a, "panic" | "unreachable"))
            .count() as u64;
        assert_eq!(
            counters(&single).5,
            traps,
            "seed {seed}: one dead letter per poison event"
        );
        assert_eq!(counters(&batched), counters(&single), "seed {seed}: the same outcomes");

        let letters = |name: &str| {
            let mut ids: Vec<String> = bus
                .dead_letters(name)
                .unwrap()
                .into_iter()
                .map(|l| l.event.id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(
            letters("batched"),
            letters("single"),
            "seed {seed}: the same dead letters"
        );

        let mut by_source = follow_ups(&recorder);
        let (from_batched, from_single) = (
            by_source.remove("batched").unwrap_or_default(),
            by_source.remove("single").unwrap_or_default(),
        );
        let expected = actions.iter().filter(|a| matches!(**a, "count" | "clock")).count();
        assert_eq!(
            from_single.len(),
            expected,
            "seed {seed}: one follow-up per count/clock"
        );
        assert_eq!(
            from_batched, from_single,
            "seed {seed}: the same follow-ups (names, correlation ids, payloads: the state-dependent \
             `seen`, the per-event clock, randomness and seq) in the same order"
        );
        bus.shutdown().await;
    }
}

#[tokio::test]
async fn a_trap_in_a_batch_dead_letters_only_the_poison_event_and_applies_the_others_once() {
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        &wasm("misbehave"),
        "misbehave",
        "[limits]\nquarantine_after = 0\n",
    );
    let bus = open(dir.path()).await;
    let counts = Recorder::attach(&bus, "fixture.count");
    let mut poison = None;
    for i in 0..11 {
        let event = bus.emit(if i == 5 { "misbehave.panic" } else { "misbehave.count" }, json!({}));
        if i == 5 {
            poison = Some(event.id().to_owned());
        }
    }
    bus.flush().await;

    let seen: Vec<u64> = counts
        .events()
        .iter()
        .map(|e| e.payload()["seen"].as_u64().unwrap())
        .collect();
    // The poison event counts itself before it panics; that instance is
    // lost and the state rebuilt from the five events before it.
    assert_eq!(
        seen,
        (1..=10).collect::<Vec<_>>(),
        "every other event applied once, in order (the failed batch's follow-ups were dropped, \
         not published before the same events ran again)"
    );
    let letters = bus.dead_letters("misbehave").unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        Some(&letters[0].event.id),
        poison.as_ref(),
        "only the poison event is a letter"
    );
    let s = stats(&bus, "misbehave");
    assert_eq!((s.delivered, s.ok, s.failures.panic), (11, 10, 1));
    assert_eq!(
        (s.batches, s.batched),
        (2, 10),
        "the failed batch is not counted; the events around the poison ran as two batches \
         (the poison failed on its own budgets: a dead letter without running again)"
    );
    bus.shutdown().await;
}

#[tokio::test]
async fn replay_output_is_byte_identical_whether_the_plugin_takes_batches_or_not() {
    let plugins = tempfile::tempdir().unwrap();
    let log = tempfile::tempdir().unwrap();
    install(
        plugins.path(),
        &wasm("misbehave"),
        "misbehave",
        "[limits]\nquarantine_after = 0\n",
    );
    let bus = Bus::builder()
        .plugin_dir(plugins.path())
        .cache_dir(support::shared_cache())
        .log_dir(log.path())
        .build()
        .await
        .unwrap();
    let live = Recorder::attach(&bus, "fixture.*");
    let mut rng = Rng(42);
    for i in 0..200 {
        bus.emit(&format!("misbehave.{}", rng.action()), json!({ "i": i }));
    }
    bus.flush().await;
    assert!(stats(&bus, "misbehave").batches > 0, "the live run was batched");
    bus.shutdown().await;
    let live: Vec<(String, String, String)> = live
        .events()
        .iter()
        .map(|e| (e.id().to_owned(), e.name().to_owned(), e.payload_json().to_owned()))
        .collect();

    async fn replay(plugins: &Path, log: &Path) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        Replay::new(plugins, log)
            .only("misbehave")
            .run(|_, e| out.push((e.id().to_owned(), e.name().to_owned(), e.payload_json().to_owned())))
            .await
            .unwrap();
        out
    }
    let batched = replay(plugins.path(), log.path()).await;
    std::fs::write(
        plugins.path().join("misbehave.toml"),
        "[limits]\nquarantine_after = 0\nmax_batch = 1\n",
    )
    .unwrap();
    let single = replay(plugins.path(), log.path()).await;
    assert!(!single.is_empty());
    assert_eq!(batched, single, "replay, batched or not, emits the same bytes");
    // Live order is publish order, which batching keeps per plugin too.
    assert_eq!(batched, live, "and the same follow-ups, ids included, as the live run");
}

#[tokio::test]
async fn a_batch_stops_at_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    // 400-byte payloads, 1 KiB per batch: two events per call.
    install(dir.path(), &wasm("misbehave"), "misbehave", "[limits]\nbatch_kib = 1\n");
    let bus = open(dir.path()).await;
    for _ in 0..20 {
        bus.emit("misbehave.ok", json!({ "pad": "x".repeat(390) }));
    }
    bus.flush().await;
    let s = stats(&bus, "misbehave");
    assert_eq!((s.delivered, s.ok), (20, 20));
    assert!(s.batches > 0, "{s:?}");
    assert_eq!(s.batched, 2 * s.batches, "every batch is cut at the byte bound: {s:?}");
    bus.shutdown().await;
}

/// Each event of a batch is held to its own deadline, also while it waits
/// in a host call (a WASI sleep, where epoch interruption cannot stop it):
/// the host's timer bounds each event from its start. It once bounded the
/// call by the sum of its events' deadlines, so the first of 30 queued
/// `sleep` events ran 1.5 s against a 50 ms deadline, and a backlog kept the
/// plugin (and `flush`, and shutdown) busy for seconds.
#[tokio::test]
async fn each_event_of_a_batch_is_held_to_its_own_deadline_in_a_host_call() {
    let dir = tempfile::tempdir().unwrap();
    let limits = "[limits]\ndeadline_ms = 50\nquarantine_after = 0\n";
    install(dir.path(), &wasm("misbehave"), "misbehave", limits);
    let bus = open(dir.path()).await;
    for _ in 0..30 {
        bus.emit("misbehave.sleep", json!({}));
    }
    bus.flush().await;
    let s = stats(&bus, "misbehave");
    assert_eq!((s.delivered, s.failures.deadline), (30, 30), "{s:?}");
    // Past 1 s (20 deadlines) is the histogram's last bucket: empty.
    assert_eq!(s.latency.buckets.last(), Some(&0), "{:?}", s.latency);
    bus.shutdown().await;
}

#[tokio::test]
async fn plugins_built_for_wit_0_1_2_run_unchanged_one_call_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = support::workspace_root().join("plugins/fixtures/compat-0.1.2");
    std::fs::copy(
        fixtures.join("token-counter-0.1.2.wasm"),
        dir.path().join("token-counter.wasm"),
    )
    .unwrap();
    std::fs::copy(
        fixtures.join("event-counter-0.1.2.wasm"),
        dir.path().join("event-counter.wasm"),
    )
    .unwrap();
    let bus = open(dir.path()).await;
    assert!(bus.load_failures().is_empty(), "{:?}", bus.load_failures());
    let reports = Recorder::attach(&bus, "token-counter.**");
    for _ in 0..50 {
        bus.emit(
            "model_responded",
            json!({ "usage": { "prompt_tokens": 10, "completion_tokens": 5 } }),
        );
    }
    bus.flush().await;
    for name in ["token-counter", "event-counter"] {
        let s = stats(&bus, name);
        assert_eq!((s.delivered, s.ok, s.batches), (50, 50, 0), "{name}: {s:?}");
    }
    let answer = bus.query("event-counter", "{}").await.unwrap();
    let table: Value = serde_json::from_str(answer.answer.get()).unwrap();
    assert_eq!(table["total"], 50, "{table}");
    assert!(reports.events().is_empty(), "no report below its threshold");
    bus.shutdown().await;
}

#[tokio::test]
async fn c_python_and_javascript_plugins_take_batches_with_the_results_of_one_call_per_event() {
    let dir = tempfile::tempdir().unwrap();
    for plugin in ["tokens-c", "tokens-py", "tokens-js"] {
        let wasm = support::lang_wasm(plugin);
        install(dir.path(), &wasm, plugin, "[limits]\nquarantine_after = 0\n");
        install(
            dir.path(),
            &wasm,
            &format!("{plugin}-single"),
            "[limits]\nquarantine_after = 0\nmax_batch = 1\n",
        );
    }
    let bus = open(dir.path()).await;
    assert!(bus.load_failures().is_empty(), "{:?}", bus.load_failures());
    let reports = Recorder::attach(&bus, "fixture.tokens");
    emit_tokens(&bus, 200, 100, &[50, 150, 199]);
    bus.flush().await;
    let by_source = follow_ups(&reports);
    for plugin in ["tokens-c", "tokens-py", "tokens-js"] {
        let (batched, single) = (stats(&bus, plugin), stats(&bus, &format!("{plugin}-single")));
        assert!(batched.batches > 0, "{plugin}: {batched:?}");
        let counters = |s: &PluginStats| (s.delivered, s.ok, s.errors, s.failures.total(), s.dead_letters);
        assert_eq!(counters(&batched), counters(&single), "{plugin}");
        assert_eq!(counters(&batched).3, 1, "{plugin}: the spin alone failed");
        let reports = by_source.get(plugin).unwrap();
        assert_eq!(reports.len(), 3, "{plugin}: {reports:?}");
        assert_eq!(
            Some(reports),
            by_source.get(&format!("{plugin}-single")),
            "{plugin}: the same totals as one call per event"
        );
    }
    bus.shutdown().await;
}

/// A plugin of the `batch-only-observer` world exports `on-events` and
/// nothing else: every delivery is a batch (a single event, a batch of
/// one, including the events run alone after a trap), its subscriptions
/// come from its manifest, and what it does is what the same work with
/// `on-event` does. Without `subscriptions` in its manifest it is refused,
/// naming them.
#[tokio::test]
async fn a_plugin_exporting_only_on_events_works_and_needs_its_subscriptions_in_its_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let only = support::lang_wasm("batch-only-js");
    let subs = "subscriptions = [\"model_responded\", \"tokens.*\"]\n";
    install(
        dir.path(),
        &only,
        "only",
        &format!("{subs}[limits]\nquarantine_after = 0\n"),
    );
    // Every event alone: each one a batch of one.
    install(
        dir.path(),
        &only,
        "only-single",
        &format!("{subs}[limits]\nquarantine_after = 0\nmax_batch = 1\n"),
    );
    install(
        dir.path(),
        &support::lang_wasm("tokens-js"),
        "reference",
        "[limits]\nquarantine_after = 0\nmax_batch = 1\n",
    );
    install(dir.path(), &only, "no-subs", "");
    let bus = open(dir.path()).await;
    let failures = bus.load_failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let refused = format!("{}: {}", failures[0].path.display(), failures[0].reason);
    assert!(
        refused.contains("no-subs") && refused.contains("batch-only-observer") && refused.contains("subscriptions"),
        "{refused}"
    );
    let reports = Recorder::attach(&bus, "fixture.tokens");
    emit_tokens(&bus, 120, 60, &[30, 90, 119]);
    bus.flush().await;
    let counters = |s: &PluginStats| (s.delivered, s.ok, s.errors, s.failures.total(), s.dead_letters);
    let reference = stats(&bus, "reference");
    assert_eq!(counters(&reference), (120, 119, 0, 1, 1), "{reference:?}");
    let by_source = follow_ups(&reports);
    assert_eq!(by_source["reference"].len(), 3, "{by_source:?}");
    for name in ["only", "only-single"] {
        let s = stats(&bus, name);
        assert_eq!(counters(&s), counters(&reference), "{name}: {s:?}");
        assert_eq!(
            by_source.get(name),
            by_source.get("reference"),
            "{name}: the same totals as on-event"
        );
    }
    let (batched, single) = (stats(&bus, "only"), stats(&bus, "only-single"));
    assert!(batched.batched > batched.batches, "{batched:?}");
    assert_eq!(
        single.batches, 0,
        "batches of one are not counted as batches: {single:?}"
    );
    bus.shutdown().await;
}

/// Queries run between calls, never inside a batch: an answer "as of" event
/// S holds exactly the events up to S, whether they came in batches or one
/// call each. Queried while the events pour in (the ledger fixture answers
/// which event ids it applied and how often).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_between_batches_see_exactly_the_events_up_to_their_as_of_seq() {
    let dir = tempfile::tempdir().unwrap();
    let log = tempfile::tempdir().unwrap();
    let ledger = wasm("ledger");
    // Queues that hold the whole stream: an event dropped for a full queue
    // would be missing from the answers for another reason.
    install(dir.path(), &ledger, "ledger", "[limits]\nqueue_capacity = 4096\n");
    install(
        dir.path(),
        &ledger,
        "ledger-single",
        "[limits]\nqueue_capacity = 4096\nmax_batch = 1\n",
    );
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .log_dir(log.path())
        .cache_dir(support::shared_cache())
        .build()
        .await
        .unwrap();
    let emitter = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..3000u64 {
                let event = bus.emit("ledger.tick", json!({ "i": i }));
                sent.push((event.seq().expect("published with a log"), event.id().to_owned()));
                if i % 100 == 99 {
                    tokio::task::yield_now().await;
                }
            }
            sent
        })
    };
    let mut answers = Vec::new();
    while !emitter.is_finished() || answers.len() < 4 {
        for name in ["ledger", "ledger-single"] {
            let answer = bus.query(name, r#"{"applied": true}"#).await.unwrap();
            let value: Value = serde_json::from_str(answer.answer.get()).unwrap();
            answers.push((name, answer.as_of_seq, value));
        }
    }
    let sent = emitter.await.unwrap();
    bus.flush().await;
    for name in ["ledger", "ledger-single"] {
        let answer = bus.query(name, r#"{"applied": true}"#).await.unwrap();
        answers.push((
            name,
            answer.as_of_seq,
            serde_json::from_str(answer.answer.get()).unwrap(),
        ));
    }
    let mut partial = 0;
    for (name, as_of, answer) in &answers {
        let mut expected: Vec<&str> = sent
            .iter()
            .filter(|(seq, _)| as_of.is_some_and(|s| *seq <= s))
            .map(|(_, id)| id.as_str())
            .collect();
        expected.sort_unstable();
        let applied = answer["applied"].as_object().unwrap();
        let mut ids: Vec<&str> = applied.keys().map(String::as_str).collect();
        ids.sort_unstable();
        assert_eq!(
            ids, expected,
            "{name} as of {as_of:?}: the events up to it, no more, no fewer"
        );
        assert!(applied.values().all(|n| n == 1), "{name}: each applied once");
        if !expected.is_empty() && expected.len() < sent.len() {
            partial += 1;
        }
    }
    assert!(partial > 0, "some answers came mid-stream ({} answers)", answers.len());
    let batched = stats(&bus, "ledger");
    assert!(batched.batches > 0, "{batched:?}");
    assert_eq!(batched.delivered, 3000, "{batched:?}");
    assert_eq!(stats(&bus, "ledger-single").batches, 0);
    bus.shutdown().await;
}
