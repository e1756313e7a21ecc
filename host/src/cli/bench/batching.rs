//! Scenario 17: batched delivery (WIT 0.1.3 `batch-handler`). Every figure
//! is the same plugin run batched (its default `max_batch`, 64) beside a
//! copy with `max_batch = 1` (one call per event, as before batching) or a
//! native handler, in one run.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::sample::payload;
use super::{Table, open, open_logged, percentile, plugin_throughput, throughput, wait_for_writer};

/// Rounds of each throughput comparison, alternating the sides: these
/// machines are shared, and one round can land on a busy moment.
const ROUNDS: usize = 3;

/// Events at one per millisecond for the low-rate latency, at most.
const LOW_RATE_EVENTS: u64 = 1000;

/// Events per round for the interpreted languages, at most (~20 µs each).
const LANGUAGE_EVENTS: u64 = 20_000;

/// A directory with token-counter as `tc`, with `manifest` beside it.
fn tc_dir(plugins: &Path, manifest: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(plugins.join("token-counter.wasm"), dir.path().join("tc.wasm"))?;
    std::fs::write(dir.path().join("tc.toml"), manifest)?;
    Ok(dir)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// Runs scenario 17 and adds its rows to `table`.
pub async fn batched_delivery(
    table: &mut Table,
    plugins: &Path,
    fixtures: &Path,
    cache: &Path,
    events: u64,
) -> anyhow::Result<()> {
    // Saturated throughput: batched, one call per event, native handler.
    let batched_dir = tc_dir(plugins, "")?;
    let single_dir = tc_dir(plugins, "[limits]\nmax_batch = 1\n")?;
    // The plugin's own work, as a loop inside one call: 64 times per event.
    let work_dir = tc_dir(plugins, "[limits]\nmax_batch = 1\n[config]\nrepeat = \"64\"\n")?;
    let (mut batched, mut single, mut native, mut work, mut batch_size) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The plugin's thread's time per event (its `busy_nanos`), whatever
    // the emitter's pace; and the native handler's own time per event.
    let (mut busy_batched, mut busy_single, mut native_own) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let bus = open(batched_dir.path(), cache).await?;
        batched.push(plugin_throughput(&bus, events, "tc").await);
        let s = tc_stats(&bus);
        if s.batches > 0 {
            batch_size.push(s.batched as f64 / s.batches as f64);
        }
        busy_batched.push(busy_per_event(&s));
        bus.shutdown().await;
        let bus = open(single_dir.path(), cache).await?;
        single.push(plugin_throughput(&bus, events, "tc").await);
        let s = tc_stats(&bus);
        busy_single.push(busy_per_event(&s));
        bus.shutdown().await;
        let bus = open(work_dir.path(), cache).await?;
        work.push(plugin_throughput(&bus, events / 16, "tc").await);
        bus.shutdown().await;
        let (rate, own) = native_throughput(events).await?;
        native.push(rate);
        native_own.push(own);
    }
    let (batched, single, native, work) = (median(batched), median(single), median(native), median(work));
    let (busy_batched, busy_single, native_own) = (median(busy_batched), median(busy_single), median(native_own));
    table.add(
        "17 batched delivery",
        "token-counter, batched (vs native handler)",
        batched,
        "ev/s",
        Some(native),
    );
    table.add(
        "17 batched delivery",
        "token-counter, batched (vs one call per event)",
        batched,
        "ev/s",
        Some(single),
    );
    if !batch_size.is_empty() {
        table.add(
            "17 batched delivery",
            "mean batch size, saturated",
            median(batch_size),
            "",
            None,
        );
    }
    // Per event: what the batched plugin costs minus its own work.
    let own = 1e6 / work / 64.0;
    table.add(
        "17 batched delivery",
        "the plugin's own work per event",
        own,
        "µs",
        None,
    );
    table.add(
        "17 batched delivery",
        "wall time per event above the plugin's own work, batched",
        1e6 / batched - own,
        "µs",
        None,
    );
    table.add(
        "17 batched delivery",
        "plugin thread's time per event, batched (vs one call per event)",
        busy_batched,
        "µs",
        Some(busy_single),
    );
    table.add(
        "17 batched delivery",
        "plugin thread's time per event above its own work, batched",
        busy_batched - own,
        "µs",
        None,
    );
    table.add(
        "17 batched delivery",
        "events/s the plugin's thread takes, batched (vs native handler's own time)",
        1e6 / busy_batched,
        "ev/s",
        Some(1e6 / native_own),
    );

    // Each language's `tokens` fixture, batched or not (the same budget for
    // both: the interpreted languages' manifests' limits); and the
    // first-party Python and JavaScript plugins that take batches (their
    // scans, windows and p95s over the same `model_responded` events).
    let first_party = [
        ("Python, first-party secret-scanner", "secret-scanner"),
        ("JavaScript, first-party latency-watch", "latency-watch"),
    ];
    for (lang, plugin) in super::LANGUAGES.iter().skip(1).chain(&first_party) {
        let file = [plugins, fixtures]
            .iter()
            .map(|d| d.join(format!("{plugin}.wasm")))
            .find(|f| f.is_file());
        let Some(file) = file else {
            eprintln!("plugbus bench: skipping {lang}: {plugin}.wasm not built (make lang-plugins)");
            continue;
        };
        let limits = "subscriptions = [\"model_responded\"]\n[limits]\nmemory_mib = 128\nfuel = 500_000_000\n";
        let (mut b, mut one) = (Vec::new(), Vec::new());
        for (max_batch, rates) in [("", &mut b), ("max_batch = 1\n", &mut one)] {
            let dir = tempfile::tempdir()?;
            std::fs::copy(&file, dir.path().join("tok.wasm"))?;
            std::fs::write(dir.path().join("tok.toml"), format!("{limits}{max_batch}"))?;
            let bus = open(dir.path(), cache).await?;
            for _ in 0..ROUNDS {
                rates.push(plugin_throughput(&bus, events.min(LANGUAGE_EVENTS), "tok").await);
            }
            bus.shutdown().await;
        }
        table.add(
            "17 batched delivery",
            &format!("{lang}: batched (vs one call per event)"),
            median(b),
            "ev/s",
            Some(median(one)),
        );
    }

    // Catch-up and replay of the same history (`events` long), batched or not.
    let history = events;
    let log = tempfile::tempdir_in(std::env::temp_dir())?;
    let empty = tempfile::tempdir()?;
    let bus = open_logged(empty.path(), cache, log.path(), plugbus::Durability::Off).await?;
    for i in 0..history {
        bus.emit("model_responded", payload(i));
        if i % 10_000 == 9_999 {
            wait_for_writer(&bus);
        }
    }
    bus.emit_durable("bench.mark", Value::Null).await?;
    bus.shutdown().await;
    let catch_up_batched = tc_dir(plugins, "replay = \"all\"\n")?;
    let catch_up_single = tc_dir(plugins, "replay = \"all\"\n[limits]\nmax_batch = 1\n")?;
    let (mut cb, mut cs, mut rb, mut rs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        cb.push(catch_up(catch_up_batched.path(), cache, log.path(), history).await?);
        cs.push(catch_up(catch_up_single.path(), cache, log.path(), history).await?);
        rb.push(replay(batched_dir.path(), cache, log.path()).await?);
        rs.push(replay(single_dir.path(), cache, log.path()).await?);
    }
    table.add(
        "17 batched delivery",
        &format!("catch-up of {history} events, batched (vs one call per event)"),
        median(cb),
        "ev/s",
        Some(median(cs)),
    );
    table.add(
        "17 batched delivery",
        &format!("plugbus replay of {history} events, batched (vs one call per event)"),
        median(rb),
        "ev/s",
        Some(median(rs)),
    );

    // Latency at a low rate: one event every millisecond, end to end; the
    // two buses take turns, so neither gets the quieter moments.
    let buses = [
        open(single_dir.path(), cache).await?,
        open(batched_dir.path(), cache).await?,
    ];
    let mut lat = [Vec::new(), Vec::new()];
    for i in 0..events.min(LOW_RATE_EVENTS) {
        for (bus, lat) in buses.iter().zip(lat.iter_mut()) {
            let t = Instant::now();
            bus.emit_and_wait("model_responded", payload(i)).await;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for bus in &buses {
        bus.shutdown().await;
    }
    for (mut lat, label) in lat.into_iter().zip(["one call per event", "batched"]) {
        lat.sort_by(f64::total_cmp);
        table.add(
            "17 batched delivery",
            &format!("latency p50 at 1 event/ms, {label}"),
            percentile(&lat, 0.5),
            "µs",
            None,
        );
        table.add(
            "17 batched delivery",
            &format!("latency p99 at 1 event/ms, {label}"),
            percentile(&lat, 0.99),
            "µs",
            None,
        );
    }
    Ok(())
}

/// A native handler doing token-counter's work, saturated (as scenario 2):
/// events/s through the bus, and the handler's own time per event (µs).
async fn native_throughput(events: u64) -> anyhow::Result<(f64, f64)> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let bus = plugbus::Bus::builder().no_cache().build().await?;
    let total = std::sync::Arc::new(AtomicU64::new(0));
    let nanos = std::sync::Arc::new(AtomicU64::new(0));
    let (t2, n2) = (total.clone(), nanos.clone());
    bus.on("model_responded", move |e| {
        let t = Instant::now();
        if let Ok(v) = serde_json::from_str::<Value>(e.payload_json()) {
            let u = &v["usage"];
            let n = u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0);
            t2.fetch_add(n, Relaxed);
        }
        n2.fetch_add(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX), Relaxed);
    })?;
    let rate = throughput(&bus, events).await;
    bus.shutdown().await;
    Ok((rate, nanos.load(Relaxed) as f64 / 1e3 / events.max(1) as f64))
}

/// The plugin's thread's time per event handled, in µs.
fn busy_per_event(s: &plugbus::PluginStats) -> f64 {
    s.busy_nanos as f64 / 1e3 / s.delivered.max(1) as f64
}

/// token-counter's counters on `bus`.
fn tc_stats(bus: &plugbus::Bus) -> plugbus::PluginStats {
    bus.plugins()
        .into_iter()
        .find(|p| p.name == "tc")
        .map(|p| p.stats)
        .unwrap_or_default()
}

/// Events per second of `tc`'s catch-up over the whole log in `log`
/// (`history` events of its).
async fn catch_up(dir: &Path, cache: &Path, log: &Path, history: u64) -> anyhow::Result<f64> {
    // A snapshot kept by the previous round would shorten this one.
    let _ = std::fs::remove_dir_all(log.join("snapshots"));
    let replayed = |bus: &plugbus::Bus| {
        bus.plugins()
            .into_iter()
            .find(|p| p.name == "tc")
            .map_or(0, |p| p.stats.replayed)
    };
    let t = Instant::now();
    let bus = open_logged(dir, cache, log, plugbus::Durability::Off).await?;
    while replayed(&bus) < history {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = history as f64 / t.elapsed().as_secs_f64();
    bus.shutdown().await;
    Ok(rate)
}

/// Events per second of `plugbus replay` of `log` into `tc`.
async fn replay(dir: &Path, cache: &Path, log: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let report = plugbus::Replay::new(dir, log)
        .emit(plugbus::ReplayEmit::Discard)
        .bus(plugbus::Bus::builder().cache_dir(cache))
        .run(|_, _| {})
        .await?;
    Ok(report.events as f64 / t.elapsed().as_secs_f64())
}
