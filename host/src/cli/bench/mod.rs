//! `plugbus bench`: side-by-side measurements in one run, reported as ratios
//! (these machines are shared and noisy: absolute numbers drift between
//! runs, ratios measured together do not). Nothing here is asserted; the
//! figures go to a table and, with `--json`, to a file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};

mod batching;
mod otlp;
mod outbound;
#[path = "../../../benches/payload.rs"]
mod sample;
use sample::payload;

/// Events between two flushes: well below the default queue of 1024, so
/// no plugin ever drops during a measurement.
const BATCH: u64 = 512;

#[derive(Serialize)]
struct Row {
    scenario: String,
    measure: String,
    value: f64,
    unit: &'static str,
    baseline: Option<f64>,
    ratio: Option<f64>,
}

#[derive(Default)]
struct Table(Vec<Row>);

impl Table {
    fn add(&mut self, scenario: &str, measure: &str, value: f64, unit: &'static str, baseline: Option<f64>) {
        let ratio = baseline.filter(|b| *b > 0.0).map(|b| value / b);
        self.0.push(Row {
            scenario: scenario.into(),
            measure: measure.into(),
            value,
            unit,
            baseline,
            ratio,
        });
    }

    fn print(&self) -> anyhow::Result<()> {
        outln!(
            "{:<22} {:<50} {:>16} {:>16} {:>7}",
            "scenario",
            "measure",
            "value",
            "baseline",
            "ratio"
        )?;
        for r in &self.0 {
            let fmt = |v: f64| format!("{v:.3} {}", r.unit);
            outln!(
                "{:<22} {:<50} {:>16} {:>16} {:>7}",
                r.scenario,
                r.measure,
                fmt(r.value),
                r.baseline.map(fmt).unwrap_or_default(),
                r.ratio.map(|x| format!("{x:.3}")).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A plugin directory with `n` copies of token-counter, plus an optional
/// runaway plugin that spins on every `model_responded` (quarantine off, to
/// measure the raw tax, or at its default).
fn plugin_dir(src: &Path, n: usize, runaway: Option<(&Path, bool)>) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for i in 0..n {
        std::fs::copy(
            src.join("token-counter.wasm"),
            dir.path().join(format!("tc-{i:03}.wasm")),
        )?;
    }
    if let Some((misbehave, quarantine)) = runaway {
        std::fs::copy(misbehave, dir.path().join("runaway.wasm"))?;
        let limits = if quarantine {
            ""
        } else {
            "[limits]\nquarantine_after = 0\n"
        };
        std::fs::write(
            dir.path().join("runaway.toml"),
            format!("subscriptions = [\"model_responded\"]\n{limits}[config]\nalways = \"spin\"\n"),
        )?;
    }
    Ok(dir)
}

/// Like [`plugin_dir`] without a runaway, but every copy differs by a custom
/// section holding its index, so each has its own cache key: a cold start
/// really compiles `n` plugins instead of compiling one and hitting the
/// cache `n - 1` times.
fn distinct_plugin_dir(src: &Path, n: usize) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let wasm = std::fs::read(src.join("token-counter.wasm"))?;
    let name = b"plugbus-bench";
    for i in 0..n {
        let payload = (i as u32).to_le_bytes();
        let mut bytes = wasm.clone();
        // A custom section (id 0): its size, the length-prefixed name, the payload.
        bytes.extend_from_slice(&[0, (1 + name.len() + payload.len()) as u8, name.len() as u8]);
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&payload);
        std::fs::write(dir.path().join(format!("tc-{i:03}.wasm")), bytes)?;
    }
    Ok(dir)
}

/// Opens `dir` twice over the empty cache `cache`: once compiling every
/// plugin, once from the artifacts that wrote. Returns both times in ms and
/// the second bus, still open.
async fn cold_then_cached(dir: &Path, cache: &Path) -> anyhow::Result<(f64, f64, plugbus::Bus)> {
    let t = Instant::now();
    let bus = open(dir, cache).await?;
    let cold = t.elapsed().as_secs_f64() * 1e3;
    bus.shutdown().await;
    let t = Instant::now();
    let bus = open(dir, cache).await?;
    let warm = t.elapsed().as_secs_f64() * 1e3;
    Ok((cold, warm, bus))
}

async fn open(dir: &Path, cache: &Path) -> anyhow::Result<plugbus::Bus> {
    let bus = plugbus::Bus::builder().plugin_dir(dir).cache_dir(cache).build().await?;
    anyhow::ensure!(
        bus.load_failures().is_empty(),
        "plugins failed to load: {:?}",
        bus.load_failures()
    );
    Ok(bus)
}

/// p50/p99 of `emit` alone (flushes excluded), in µs.
async fn emit_latency(bus: &plugbus::Bus, events: u64) -> (f64, f64) {
    let mut samples = Vec::with_capacity(events as usize);
    for i in 0..events {
        let p = payload(i);
        let t = Instant::now();
        bus.emit("model_responded", p);
        samples.push(micros(t.elapsed()));
        if i % BATCH == BATCH - 1 {
            bus.flush().await;
        }
    }
    bus.flush().await;
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// The floor: the same payload handed to `queues` bounded channels with
/// `try_send`, consumers draining them.
async fn mpsc_floor(queues: usize, events: u64) -> (f64, f64) {
    let mut senders = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..queues {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::sync::Arc<Value>>(1024);
        senders.push(tx);
        consumers.push(tokio::spawn(async move { while rx.recv().await.is_some() {} }));
    }
    let mut samples = Vec::with_capacity(events as usize);
    for i in 0..events {
        let p = std::sync::Arc::new(payload(i));
        let t = Instant::now();
        for tx in &senders {
            let _ = tx.try_send(p.clone());
        }
        samples.push(micros(t.elapsed()));
        if i % BATCH == BATCH - 1 {
            tokio::task::yield_now().await;
        }
    }
    drop(senders);
    for c in consumers {
        let _ = c.await;
    }
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// Events per second through plugin `name` alone: batches are paced on its
/// own progress, so a runaway neighbour (whose queue simply overflows)
/// does not enter the measurement.
async fn plugin_throughput(bus: &plugbus::Bus, events: u64, name: &str) -> f64 {
    paced_throughput(bus, events, name, |i| {
        plugbus::Event::new("model_responded", payload(i))
    })
    .await
}

/// [`plugin_throughput`] with the events `event(i)` makes.
async fn paced_throughput(bus: &plugbus::Bus, events: u64, name: &str, event: impl Fn(u64) -> plugbus::Event) -> f64 {
    let delivered = || {
        bus.plugins()
            .into_iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.stats.delivered)
    };
    let start = delivered();
    let t = Instant::now();
    for i in 0..events {
        bus.publish(event(i));
        if i % BATCH == BATCH - 1 || i == events - 1 {
            while delivered() - start < i + 1 {
                // A thread sleep, not `tokio::time::sleep`: tokio's timer has
                // 1 ms granularity, which added up to 1 ms to every batch of
                // ~1.5 ms and made plugins look ~30% slower than they are.
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }
    events as f64 / t.elapsed().as_secs_f64()
}

/// With quarantine on, emits until the runaway plugin is quarantined, so the
/// measurement that follows is the steady state of a long-running service:
/// the five failures it takes to trip the breaker (each burning its full
/// fuel on one of the two cores) are a one-off, reported apart.
async fn settle_runaway(bus: &plugbus::Bus) -> Duration {
    let t = Instant::now();
    let quarantined = || {
        bus.plugins()
            .iter()
            .any(|p| p.name == "runaway" && p.state == plugbus::PluginState::Quarantined)
    };
    let mut i = 0;
    while !quarantined() && t.elapsed() < Duration::from_secs(30) {
        bus.emit_and_wait("model_responded", payload(i)).await;
        i += 1;
    }
    bus.flush().await;
    t.elapsed()
}

/// Events per second through the bus until every handler has finished.
async fn throughput(bus: &plugbus::Bus, events: u64) -> f64 {
    let t = Instant::now();
    for i in 0..events {
        bus.emit("model_responded", payload(i));
        if i % BATCH == BATCH - 1 {
            bus.flush().await;
        }
    }
    bus.flush().await;
    events as f64 / t.elapsed().as_secs_f64()
}

fn rss_kib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4.0)
}

/// The Python peer (scenario 7), embedded so the binary runs it from anywhere.
const PYTHON_PEER: &str = include_str!("../../../benches/python_peer.py");

/// Scenario 7: emit p50/p99 of a plain-Python bus calling 10 JSON-parsing
/// handlers inline (the `agent-event-bus` model), run now with the same
/// event count. `None`, with a note, when python3 is not available.
fn python_peer(events: u64) -> anyhow::Result<Option<(f64, f64)>> {
    let script = tempfile::Builder::new().suffix(".py").tempfile()?;
    std::fs::write(script.path(), PYTHON_PEER)?;
    let python = std::env::var("PLUGBUS_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = match std::process::Command::new(&python)
        .arg(script.path())
        .args(["--events", &events.to_string(), "--handlers", "10"])
        .output()
    {
        Ok(out) if out.status.success() => out,
        Ok(out) => anyhow::bail!("the Python peer failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => {
            eprintln!("plugbus bench: skipping the Python peer: {python}: {e}");
            return Ok(None);
        }
    };
    let v: Value = serde_json::from_slice(&out.stdout).context("the Python peer's output")?;
    let field = |k: &str| v[k].as_f64().with_context(|| format!("the Python peer's `{k}`"));
    Ok(Some((field("p50_us")?, field("p99_us")?)))
}

/// The same observer (parse the `model_responded` payload, add up its
/// tokens) in each plugin language: the Rust `token-counter` plugin and the
/// `tokens-*` fixtures.
const LANGUAGES: [(&str, &str); 4] = [
    ("Rust", "token-counter"),
    ("C", "tokens-c"),
    ("Python", "tokens-py"),
    ("JavaScript", "tokens-js"),
];

/// Scenario 3, per-language cost: events/s through each language's observer
/// against the native handler, its memory, and its cold compile against a
/// cached load. Languages whose fixture is not built are skipped with a note.
async fn per_language(
    table: &mut Table,
    plugins: &Path,
    fixtures: &Path,
    events: u64,
    native_rate: f64,
) -> anyhow::Result<()> {
    for (lang, plugin) in LANGUAGES {
        let file = [plugins, fixtures]
            .iter()
            .map(|d| d.join(format!("{plugin}.wasm")))
            .find(|f| f.is_file());
        let Some(file) = file else {
            eprintln!("plugbus bench: skipping {lang}: {plugin}.wasm not built (make lang-plugins)");
            continue;
        };
        let dir = tempfile::tempdir()?;
        std::fs::copy(&file, dir.path().join("tok.wasm"))?;
        // One budget for all, so the comparison is of the languages alone:
        // the Python and JavaScript manifests' limits.
        std::fs::write(
            dir.path().join("tok.toml"),
            "subscriptions = [\"model_responded\"]\n[limits]\nmemory_mib = 128\nfuel = 500_000_000\n",
        )?;
        let cold_cache = tempfile::tempdir()?;
        let (cold, warm, bus) = cold_then_cached(dir.path(), cold_cache.path()).await?;
        let rate = plugin_throughput(&bus, events, "tok").await;
        let memory = bus
            .plugins()
            .into_iter()
            .find(|p| p.name == "tok")
            .map_or(0, |p| p.stats.memory_bytes);
        bus.shutdown().await;
        let size = std::fs::metadata(&file)?.len() as f64 / (1024.0 * 1024.0);
        let scenario = "3 per language";
        table.add(
            scenario,
            &format!("{lang}: events/s (vs native)"),
            rate,
            "ev/s",
            Some(native_rate),
        );
        table.add(
            scenario,
            &format!("{lang}: per event (vs native)"),
            1e6 / rate,
            "µs",
            Some(1e6 / native_rate),
        );
        table.add(
            scenario,
            &format!("{lang}: linear memory"),
            memory as f64 / (1024.0 * 1024.0),
            "MiB",
            None,
        );
        table.add(scenario, &format!("{lang}: component size"), size, "MiB", None);
        table.add(
            scenario,
            &format!("{lang}: load, cached (vs cold compile)"),
            warm,
            "ms",
            Some(cold),
        );
    }
    Ok(())
}

/// Runs the scenarios (all, or the groups holding those in `only`), prints
/// the table and optionally writes it as JSON.
pub async fn bench(
    plugins: &Path,
    fixtures: &Path,
    events: u64,
    only: &[u32],
    json_out: Option<&PathBuf>,
) -> anyhow::Result<std::process::ExitCode> {
    // Scenarios share set-ups (4 runs beside 1 and 2, 7 reuses 1's figure),
    // so `--only` selects the groups that hold the wanted ones.
    let want = |group: &[u32]| only.is_empty() || group.iter().any(|n| only.contains(n));
    let misbehave = plugins.join("misbehave.wasm");
    anyhow::ensure!(
        plugins.join("token-counter.wasm").is_file(),
        "{}: token-counter.wasm not found (make plugins)",
        plugins.display()
    );
    let cache = tempfile::tempdir().context("temporary cache directory")?;
    let mut table = Table::default();
    eprintln!(
        "plugbus bench: {events} events per scenario, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    if want(&[1, 4, 7]) {
        // 1. Emit cost (emitter side) vs the mpsc floor; 4. with a runaway plugin.
        let mut ten = None;
        for n in [0usize, 1, 10, 100] {
            let dir = plugin_dir(plugins, n, None)?;
            let bus = open(dir.path(), cache.path()).await?;
            let (p50, p99) = emit_latency(&bus, events).await;
            let (f50, f99) = mpsc_floor(n, events).await;
            table.add(
                "1 emit latency",
                &format!("p50, {n} wasm subscribers (vs mpsc)"),
                p50,
                "µs",
                Some(f50),
            );
            table.add(
                "1 emit latency",
                &format!("p99, {n} wasm subscribers (vs mpsc)"),
                p99,
                "µs",
                Some(f99),
            );
            bus.shutdown().await;
            if n == 10 {
                ten = Some((p50, p99));
                for (quarantine, label) in [(false, "runaway, no quarantine"), (true, "runaway, quarantined")] {
                    let dir = plugin_dir(plugins, n, Some((&misbehave, quarantine)))?;
                    let bus = open(dir.path(), cache.path()).await?;
                    if quarantine {
                        let trip = settle_runaway(&bus).await;
                        table.add(
                            "4 runaway tax",
                            "time for the breaker to quarantine the runaway",
                            trip.as_secs_f64() * 1e3,
                            "ms",
                            None,
                        );
                    }
                    let (r50, r99) = emit_latency(&bus, events).await;
                    table.add(
                        "4 runaway tax",
                        &format!("emit p50, 10 subscribers + {label}"),
                        r50,
                        "µs",
                        Some(p50),
                    );
                    table.add(
                        "4 runaway tax",
                        &format!("emit p99, 10 subscribers + {label}"),
                        r99,
                        "µs",
                        Some(p99),
                    );
                    bus.shutdown_with(Duration::ZERO).await;
                }
            }
        }

        // 7. The Python peer: the same 10 subscribers' emit, as an in-process Python bus.
        if let (Some((p50, p99)), Some((py50, py99))) = (ten, python_peer(events)?) {
            table.add(
                "7 python peer",
                "emit p50, 10 wasm subscribers (vs 10 Python handlers)",
                p50,
                "µs",
                Some(py50),
            );
            table.add(
                "7 python peer",
                "emit p99, 10 wasm subscribers (vs 10 Python handlers)",
                p99,
                "µs",
                Some(py99),
            );
        }
    }
    if want(&[2, 3, 4]) {
        // 2. Handler cost: one Rust-SDK plugin vs a native handler doing the same work.
        let dir = plugin_dir(plugins, 1, None)?;
        let wasm_bus = open(dir.path(), cache.path()).await?;
        // Paced on the plugin's own progress, like the runaway runs below.
        let wasm_rate = plugin_throughput(&wasm_bus, events, "tc-000").await;
        wasm_bus.shutdown().await;
        let native_bus = plugbus::Bus::builder().no_cache().build().await?;
        let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let t2 = total.clone();
        native_bus.on("model_responded", move |e| {
            // The same work as token-counter: parse the shared payload text, add up.
            if let Ok(v) = serde_json::from_str::<Value>(e.payload_json()) {
                let u = &v["usage"];
                let n = u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0);
                t2.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        })?;
        let native_rate = throughput(&native_bus, events).await;
        table.add(
            "2 handler throughput",
            "1 wasm plugin vs native handler",
            wasm_rate,
            "ev/s",
            Some(native_rate),
        );
        let dir = plugin_dir(plugins, 10, None)?;
        let bus10 = open(dir.path(), cache.path()).await?;
        let rate10 = throughput(&bus10, events).await;
        per_language(&mut table, plugins, fixtures, events, native_rate).await?;
        table.add(
            "2 handler throughput",
            "10 wasm plugins (events/s, all done)",
            rate10,
            "ev/s",
            Some(native_rate),
        );
        bus10.shutdown().await;
        for (quarantine, label) in [(false, "no quarantine"), (true, "quarantined")] {
            let dir = plugin_dir(plugins, 1, Some((&misbehave, quarantine)))?;
            let bus_r = open(dir.path(), cache.path()).await?;
            if quarantine {
                settle_runaway(&bus_r).await;
            }
            let rate_r = plugin_throughput(&bus_r, events, "tc-000").await;
            table.add(
                "4 runaway tax",
                &format!("healthy plugin + runaway, {label}"),
                rate_r,
                "ev/s",
                Some(wasm_rate),
            );
            bus_r.shutdown_with(Duration::ZERO).await;
        }
    }
    if want(&[5]) {
        // 5. Recovery: serving the next event right after a trap vs normally.
        let dir = tempfile::tempdir()?;
        std::fs::copy(&misbehave, dir.path().join("misbehave.wasm"))?;
        std::fs::write(dir.path().join("misbehave.toml"), "[limits]\nquarantine_after = 0\n")?;
        let bus5 = open(dir.path(), cache.path()).await?;
        let (mut after_trap, mut normal) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            bus5.emit_and_wait("misbehave.unreachable", Value::Null).await;
            let t = Instant::now();
            bus5.emit_and_wait("misbehave.ok", Value::Null).await;
            after_trap.push(micros(t.elapsed()));
            let t = Instant::now();
            bus5.emit_and_wait("misbehave.ok", Value::Null).await;
            normal.push(micros(t.elapsed()));
        }
        after_trap.sort_by(f64::total_cmp);
        normal.sort_by(f64::total_cmp);
        let (a, n) = (percentile(&after_trap, 0.5), percentile(&normal, 0.5));
        // misbehave has no `state`: each rebuild replays every event it
        // handled since its instance started (~200 on average here).
        table.add(
            "5 recovery",
            "next event after a trap, stateless: replays all kept (p50)",
            a,
            "µs",
            Some(n),
        );
        table.add("5 recovery", "rebuild cost (difference)", a - n, "µs", None);
        bus5.shutdown().await;
    }
    if want(&[6]) {
        // 6. Start-up: cold compile vs cached artifact; RSS per idle plugin.
        for n in [1usize, 10, 100] {
            let dir = distinct_plugin_dir(plugins, n)?;
            let cold_cache = tempfile::tempdir()?;
            let (cold, warm, b) = cold_then_cached(dir.path(), cold_cache.path()).await?;
            b.shutdown().await;
            table.add(
                "6 start-up",
                &format!("load {n} plugins, cached (vs cold)"),
                warm,
                "ms",
                Some(cold),
            );
        }
        let dir = plugin_dir(plugins, 100, None)?;
        let before = rss_kib();
        let b = open(dir.path(), cache.path()).await?;
        if let (Some(before), Some(after)) = (before, rss_kib()) {
            table.add(
                "6 start-up",
                "RSS per idle plugin (100 loaded)",
                (after - before) / 100.0 / 1024.0,
                "MiB",
                None,
            );
        }
        b.shutdown().await;
    }
    if want(&[8]) {
        log_scenarios(&mut table, plugins, cache.path(), events).await?;
    }
    if want(&[9]) {
        state_recovery(&mut table, plugins, cache.path()).await?;
    }
    if want(&[10]) {
        replay_throughput(&mut table, plugins, cache.path(), events).await?;
    }
    if want(&[11]) {
        projection_queries(&mut table, plugins, cache.path(), events).await?;
    }
    if want(&[12]) {
        schema_cost(&mut table, events).await?;
    }
    if want(&[13]) {
        dashboard_cost(&mut table, plugins, cache.path(), events).await?;
    }
    if want(&[14]) {
        nats_scenarios(&mut table, plugins, cache.path(), events).await?;
    }
    if want(&[15]) {
        catch_up_throughput(&mut table, plugins, cache.path(), events).await?;
    }
    if want(&[16]) {
        otlp::ingest(&mut table, events).await?;
    }
    if want(&[17]) {
        batching::batched_delivery(&mut table, plugins, fixtures, cache.path(), events).await?;
    }
    if want(&[18]) {
        outbound::outbound(&mut table, [plugins, fixtures], cache.path(), events).await?;
    }
    table.print()?;
    if let Some(path) = json_out {
        let doc = json!({ "events": events, "cores": std::thread::available_parallelism().map_or(1, |n| n.get()), "rows": table.0 });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// A bus over `dir` with an event log in `log`.
async fn open_logged(
    dir: &Path,
    cache: &Path,
    log: &Path,
    durability: plugbus::Durability,
) -> anyhow::Result<plugbus::Bus> {
    let bus = plugbus::Bus::builder()
        .plugin_dir(dir)
        .cache_dir(cache)
        .log_dir(log)
        .durability(durability)
        .build()
        .await?;
    anyhow::ensure!(bus.load_failures().is_empty(), "{:?}", bus.load_failures());
    Ok(bus)
}

/// Sequential write rate of the disk under `dir`: 256 MiB in 1 MiB writes,
/// then `fdatasync`: the ceiling of any log on it.
fn disk_write_rate(dir: &Path) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("plugbus-bench-disk");
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for _ in 0..256 {
        f.write_all(&chunk)?;
    }
    f.sync_data()?;
    let rate = 256.0 / t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// Scenario 8: the event log. Emit latency with the log on (batched) against
/// off, 10 subscribers; sustained append rate of the bench payload under
/// `batched` and `always` (the emitter paced so that nothing overflows),
/// against the disk's own sequential write rate.
async fn log_scenarios(table: &mut Table, plugins: &Path, cache: &Path, events: u64) -> anyhow::Result<()> {
    let dir = plugin_dir(plugins, 10, None)?;
    let bus = open(dir.path(), cache).await?;
    let (off50, off99) = emit_latency(&bus, events).await;
    bus.shutdown().await;
    let log = tempfile::tempdir_in(std::env::temp_dir())?;
    let bus = open_logged(dir.path(), cache, log.path(), plugbus::Durability::Batched).await?;
    let (on50, on99) = emit_latency(&bus, events).await;
    bus.shutdown().await;
    table.add(
        "8 event log",
        "emit p50, 10 subscribers, log batched (vs off)",
        on50,
        "µs",
        Some(off50),
    );
    table.add(
        "8 event log",
        "emit p99, 10 subscribers, log batched (vs off)",
        on99,
        "µs",
        Some(off99),
    );

    let disk = disk_write_rate(log.path())?;
    table.add(
        "8 event log",
        "disk sequential write (fdatasync at end)",
        disk,
        "MiB/s",
        None,
    );
    let empty = tempfile::tempdir()?;
    for durability in [plugbus::Durability::Batched, plugbus::Durability::Always] {
        let log = tempfile::tempdir_in(std::env::temp_dir())?;
        let bus = open_logged(empty.path(), cache, log.path(), durability).await?;
        // Ten times the scenario's events: long enough to be sustained.
        // Paced on the writer's own progress (at most 16,384 events waiting,
        // a quarter of its buffer): what the log sustains without losing
        // any, rather than how fast an emitter can overflow it.
        let n = events * 10;
        let t = Instant::now();
        for i in 0..n {
            bus.emit("model_responded", payload(i));
            if i % 1024 == 1023 {
                wait_for_writer(&bus);
            }
        }
        bus.emit_durable("bench.end", Value::Null).await?;
        let secs = t.elapsed().as_secs_f64();
        let status = bus.log_status().context("log status")?;
        bus.shutdown().await;
        let bytes = plugbus::LogStats::read(log.path())?.bytes as f64;
        let written = (n - status.lost) as f64;
        table.add(
            "8 event log",
            &format!("sustained append, {durability} (events/s logged)"),
            written / secs,
            "ev/s",
            None,
        );
        table.add(
            "8 event log",
            &format!("sustained append, {durability} (vs disk rate)"),
            bytes / (1 << 20) as f64 / secs,
            "MiB/s",
            Some(disk),
        );
        if status.lost > 0 {
            table.add(
                "8 event log",
                &format!("sustained append, {durability}: not logged (overflow)"),
                status.lost as f64,
                "events",
                None,
            );
        }
    }
    Ok(())
}

/// Log sizes scenario 15 catches up over, in MiB: `PLUGBUS_BENCH_CATCH_UP_MB`
/// (comma-separated), or `events` / 2,000, / 200 and / 20 (10, 100 and
/// 1,000 MiB at the default 20,000 events): two orders of magnitude show
/// whether the rate per event stays flat (linear cost), within this
/// machine's disk budget.
fn catch_up_sizes(events: u64) -> Vec<u64> {
    match std::env::var("PLUGBUS_BENCH_CATCH_UP_MB") {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) => {
            let mut sizes: Vec<u64> = [2_000, 200, 20].iter().map(|d| (events / d).max(1)).collect();
            sizes.dedup();
            sizes
        }
    }
}

/// Bytes of the segment files in `log`.
fn log_bytes(log: &Path) -> u64 {
    std::fs::read_dir(log).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// Scenario 15: catch-up throughput. One log grown to each size in turn
/// (the bench payload, durability off: writing is not what is measured);
/// at each, token-counter with `replay = "all"` is loaded on a new bus and
/// timed from the build until it has handled every logged event. A flat
/// rate across sizes is linear cost.
async fn catch_up_throughput(table: &mut Table, plugins: &Path, cache: &Path, events: u64) -> anyhow::Result<()> {
    let log = tempfile::tempdir_in(std::env::temp_dir())?;
    let empty = tempfile::tempdir()?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(plugins.join("token-counter.wasm"), dir.path().join("tc.wasm"))?;
    std::fs::write(dir.path().join("tc.toml"), "replay = \"all\"\n")?;
    let mut emitted = 0u64;
    for mb in catch_up_sizes(events) {
        let bus = open_logged(empty.path(), cache, log.path(), plugbus::Durability::Off).await?;
        while log_bytes(log.path()) < mb << 20 {
            for _ in 0..10_000 {
                bus.emit("model_responded", payload(emitted));
                emitted += 1;
            }
            // Paced on the writer, so that nothing overflows.
            wait_for_writer(&bus);
            bus.emit_durable("bench.mark", Value::Null).await?;
        }
        let lost = bus.log_status().map_or(0, |s| s.lost);
        bus.shutdown().await;
        anyhow::ensure!(lost == 0, "{lost} events not logged while filling the log");
        // A snapshot kept by the previous round would shorten this one.
        let _ = std::fs::remove_dir_all(log.path().join("snapshots"));
        let replayed = |bus: &plugbus::Bus| {
            bus.plugins()
                .into_iter()
                .find(|p| p.name == "tc")
                .map_or(0, |p| p.stats.replayed)
        };
        let t = Instant::now();
        let bus = open_logged(dir.path(), cache, log.path(), plugbus::Durability::Off).await?;
        while replayed(&bus) < emitted {
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = t.elapsed().as_secs_f64();
        bus.shutdown().await;
        let size = log_bytes(log.path()) as f64 / (1 << 20) as f64;
        table.add(
            "15 catch-up",
            &format!("replay = \"all\" over {size:.0} MiB ({emitted} events)"),
            emitted as f64 / secs,
            "ev/s",
            None,
        );
    }
    Ok(())
}

/// Scenario 9: recovery with state. token-counter (with `state`, snapshot
/// every 1000) traps on a poison event after 999 events past its last
/// snapshot; the next event pays for a fresh instance, the restore and the
/// replay of those 999. Against a normal event.
async fn state_recovery(table: &mut Table, plugins: &Path, cache: &Path) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(plugins.join("token-counter.wasm"), dir.path().join("tc.wasm"))?;
    std::fs::write(
        dir.path().join("tc.toml"),
        "[limits]\nfuel = 300_000\nsnapshot_every = 1000\nquarantine_after = 0\n",
    )?;
    let bus = open(dir.path(), cache).await?;
    let poison = json!({ "usage": { "prompt_tokens": 1 }, "padding": vec![1; 20_000] });
    let mut i = 0u64;
    let mut feed = |bus: &plugbus::Bus, n: u64| {
        for _ in 0..n {
            bus.emit("model_responded", payload(i));
            i += 1;
        }
    };
    // Reach the first snapshot.
    feed(&bus, 1000);
    bus.flush().await;
    let (mut after, mut normal) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        feed(&bus, 998);
        bus.flush().await;
        let t = Instant::now();
        bus.emit_and_wait("model_responded", payload(0)).await;
        normal.push(micros(t.elapsed()));
        bus.emit_and_wait("model_responded", poison.clone()).await;
        let t = Instant::now();
        bus.emit_and_wait("model_responded", payload(0)).await;
        after.push(micros(t.elapsed()));
    }
    let stats = bus.plugins().into_iter().find(|p| p.name == "tc").map(|p| p.stats);
    bus.shutdown().await;
    after.sort_by(f64::total_cmp);
    normal.sort_by(f64::total_cmp);
    let (a, n) = (percentile(&after, 0.5), percentile(&normal, 0.5));
    table.add(
        "9 state recovery",
        "next event after a trap: restore + replay 999 (p50)",
        a,
        "µs",
        Some(n),
    );
    table.add("9 state recovery", "recovery cost (difference)", a - n, "µs", None);
    if let Some(s) = stats {
        table.add(
            "9 state recovery",
            "rebuilds with state restored",
            s.state_restored as f64,
            "",
            None,
        );
    }
    Ok(())
}

/// Scenario 10: replay throughput into one plugin (token-counter, from the
/// log, `--emit discard`) against its live throughput, measured here too.
async fn replay_throughput(table: &mut Table, plugins: &Path, cache: &Path, events: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(plugins.join("token-counter.wasm"), dir.path().join("tc.wasm"))?;
    let log = tempfile::tempdir_in(std::env::temp_dir())?;
    let bus = open_logged(dir.path(), cache, log.path(), plugbus::Durability::Batched).await?;
    let live = plugin_throughput(&bus, events, "tc").await;
    bus.shutdown().await;
    let t = Instant::now();
    let report = plugbus::Replay::new(dir.path(), log.path())
        .emit(plugbus::ReplayEmit::Discard)
        .bus(plugbus::Bus::builder().cache_dir(cache))
        .run(|_, _| {})
        .await?;
    let rate = report.events as f64 / t.elapsed().as_secs_f64();
    table.add(
        "10 replay",
        "replay into one plugin (vs live)",
        rate,
        "ev/s",
        Some(live),
    );
    Ok(())
}

/// Runs `agent-runs` holds in scenario 11.
const RUNS: u64 = 10_000;

/// One event of run `i % RUNS` in scenario 11: a model call, a tool call,
/// and the run's start, in turn.
fn run_event(i: u64) -> plugbus::Event {
    let payload = match i / RUNS % 3 {
        0 => json!({ "agent": format!("agent-{}", i % 7) }),
        1 => json!({ "usage": { "prompt_tokens": 900 + i % 100, "completion_tokens": 120 }, "cost_usd": 0.0021 }),
        _ => json!({ "tool": "web_search" }),
    };
    let name = ["agent.run_started", "model_responded", "tool.called"][(i / RUNS % 3) as usize];
    plugbus::Event::new(name, payload).with_correlation_id(format!("run-{}", i % RUNS))
}

/// The native twin of one `agent-runs` run: what a map in the agent's own
/// process would hold.
#[derive(Serialize, Default)]
struct NativeRun {
    agent: String,
    status: &'static str,
    tools: Vec<String>,
    tokens: u64,
    cost_usd: f64,
    errors: Vec<String>,
    events: u64,
    first_ns: u64,
    last_ns: u64,
}

/// Scenario 11: projection queries. `agent-runs` holding 10,000 runs:
/// p50/p99 of `{"run": …}` through `Bus::query` (request in, JSON out),
/// beside the same lookup in a native `BTreeMap` (parse the request, look
/// up, serialise the run). Then event throughput into `agent-runs` with a
/// query every millisecond, against none, alternated twice.
async fn projection_queries(table: &mut Table, plugins: &Path, cache: &Path, events: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(plugins.join("agent-runs.wasm"), dir.path().join("agent-runs.wasm"))
        .with_context(|| format!("{}/agent-runs.wasm (run `make plugins`)", plugins.display()))?;
    // Its first-party manifest's snapshot period (a snapshot writes every run).
    std::fs::write(
        dir.path().join("agent-runs.toml"),
        "[limits]\nsnapshot_every = 10_000\n",
    )?;
    let bus = open(dir.path(), cache).await?;
    let mut native: std::collections::BTreeMap<String, NativeRun> = std::collections::BTreeMap::new();
    for i in 0..RUNS * 3 {
        let event = run_event(i);
        let run = native
            .entry(event.correlation_id().unwrap_or_default().to_owned())
            .or_default();
        run.events += 1;
        run.first_ns = event.time_unix_nanos();
        run.last_ns = event.time_unix_nanos();
        match event.name() {
            "agent.run_started" => (run.agent, run.status) = (format!("agent-{}", i % 7), "running"),
            "model_responded" => (run.tokens, run.cost_usd) = (run.tokens + 1020, run.cost_usd + 0.0021),
            _ => run.tools.push("web_search".into()),
        }
        bus.publish(event);
        if i % BATCH == BATCH - 1 {
            bus.flush().await;
        }
    }
    bus.flush().await;
    let held = bus
        .query("agent-runs", r#"{"summary": true}"#)
        .await?
        .parse::<Value>()?;
    anyhow::ensure!(held["runs"] == RUNS, "agent-runs holds {held}");

    let (mut wasm, mut map) = (Vec::new(), Vec::new());
    for i in 0..5_000u64 {
        let request = format!(r#"{{"run": "run-{}"}}"#, i * 7919 % RUNS);
        let t = Instant::now();
        let answer = bus.query("agent-runs", &request).await?;
        wasm.push(micros(t.elapsed()));
        std::hint::black_box(answer);
        let t = Instant::now();
        let asked: Value = serde_json::from_str(&request)?;
        let id = asked["run"].as_str().unwrap_or_default();
        let text = native.get(id).map(|run| serde_json::to_string(&(id, run)));
        map.push(micros(t.elapsed()));
        std::hint::black_box(text);
    }
    wasm.sort_by(f64::total_cmp);
    map.sort_by(f64::total_cmp);
    for (label, p) in [("p50", 0.5), ("p99", 0.99)] {
        table.add(
            "11 projection queries",
            &format!("{{\"run\"}} on 10,000 runs {label} (vs native map)"),
            percentile(&wasm, p),
            "µs",
            Some(percentile(&map, p)),
        );
    }

    // Throughput with a query every millisecond, alternated with none in
    // eight rounds each: the machine's drift hits both sides alike, and the
    // medians are compared.
    let (mut quiet, mut queried, mut asked) = (Vec::new(), Vec::new(), 0u64);
    let mut offset = RUNS * 3;
    for _ in 0..8 {
        quiet.push(paced_throughput(&bus, events, "agent-runs", |i| run_event(offset + i)).await);
        offset += events;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let asker = {
            let (bus, stop) = (bus.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    let _ = bus
                        .query("agent-runs", &format!(r#"{{"run": "run-{}"}}"#, n % RUNS))
                        .await;
                    n += 1;
                }
                n
            })
        };
        queried.push(paced_throughput(&bus, events, "agent-runs", |i| run_event(offset + i)).await);
        offset += events;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        asked += asker.await?;
    }
    bus.shutdown().await;
    quiet.sort_by(f64::total_cmp);
    queried.sort_by(f64::total_cmp);
    table.add(
        "11 projection queries",
        "events into agent-runs, a query every ms (vs none), median",
        percentile(&queried, 0.5),
        "ev/s",
        Some(percentile(&quiet, 0.5)),
    );
    table.add(
        "11 projection queries",
        "queries answered during those runs",
        asked as f64,
        "",
        None,
    );
    Ok(())
}

/// Scenario 12: the cost of a schema at emit. Emit p50/p99 of the bench
/// payload with a typical `model_responded` schema (types, required fields,
/// a minimum, an enum) against the same bus without one, alternated over
/// four rounds; one native handler subscribed, so the emit does real work.
async fn schema_cost(table: &mut Table, events: u64) -> anyhow::Result<()> {
    let schema = json!({
        "type": "object",
        "required": ["model", "usage"],
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "usage": {
                "type": "object",
                "required": ["prompt_tokens", "completion_tokens"],
                "properties": {
                    "prompt_tokens": {"type": "integer", "minimum": 0},
                    "completion_tokens": {"type": "integer", "minimum": 0}
                }
            },
            "cost_usd": {"type": "number", "minimum": 0},
            "finish_reason": {"enum": ["stop", "length", "tool_calls"]}
        }
    });
    let with = plugbus::Bus::builder()
        .schema("model_responded", schema)
        .build()
        .await?;
    let without = plugbus::Bus::builder().build().await?;
    for bus in [&with, &without] {
        bus.on("model_responded", |e| {
            std::hint::black_box(e.payload());
        })?;
    }
    let (mut w50, mut w99, mut n50, mut n99) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..4 {
        let (a, b) = emit_latency(&with, events).await;
        w50.push(a);
        w99.push(b);
        let (a, b) = emit_latency(&without, events).await;
        n50.push(a);
        n99.push(b);
    }
    anyhow::ensure!(with.schema_rejected() == 0, "the bench payload must fit the schema");
    with.shutdown().await;
    without.shutdown().await;
    for v in [&mut w50, &mut w99, &mut n50, &mut n99] {
        v.sort_by(f64::total_cmp);
    }
    let median = |v: &[f64]| percentile(v, 0.5);
    table.add(
        "12 schema at emit",
        "emit p50 with a schema (vs none)",
        median(&w50),
        "µs",
        Some(median(&n50)),
    );
    table.add(
        "12 schema at emit",
        "emit p99 with a schema (vs none)",
        median(&w99),
        "µs",
        Some(median(&n99)),
    );
    Ok(())
}

/// Scenario 13: the dashboard. (a) Its tap's cost at emit: emit p50 on a bus
/// with a dashboard attached against one without, alternated over four
/// rounds. (b) 100 plugins while events flow at 10,000/s for 2 s (names no
/// plugin subscribes to, so the bus, not the plugins, sets the pace): the
/// time to build one stream snapshot and write its JSON, its size, and the
/// events it carries.
async fn dashboard_cost(table: &mut Table, plugins: &Path, cache: &Path, events: u64) -> anyhow::Result<()> {
    use super::dashboard::{Dashboard, Filter, SNAPSHOT_INTERVAL};
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let with = plugbus::Bus::builder().build().await?;
    let without = plugbus::Bus::builder().build().await?;
    let dashboard = Dashboard::start(&with, 0, stopping.clone());
    let (mut w50, mut n50) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        w50.push(emit_latency(&with, events).await.0);
        n50.push(emit_latency(&without, events).await.0);
    }
    drop(dashboard);
    with.shutdown().await;
    without.shutdown().await;
    w50.sort_by(f64::total_cmp);
    n50.sort_by(f64::total_cmp);
    table.add(
        "13 dashboard",
        "emit p50 with the dashboard attached (vs none)",
        percentile(&w50, 0.5),
        "µs",
        Some(percentile(&n50, 0.5)),
    );

    const RATE: u64 = 10_000;
    let dir = plugin_dir(plugins, 100, None)?;
    let bus = open(dir.path(), cache).await?;
    let dashboard = Dashboard::start(&bus, 0, stopping);
    let filter = Filter::all();
    let mut after = Some(dashboard.next_snapshot(&filter, None).1);
    let emitter = {
        let bus = bus.clone();
        tokio::task::spawn_blocking(move || {
            // 10 events a millisecond, on time: sleep to each millisecond's start.
            let start = Instant::now();
            for ms in 0..2 * RATE / 10 {
                for i in 0..10 {
                    bus.emit("tool.called", json!({"tool": "search", "n": ms * 10 + i}));
                }
                let next = start + Duration::from_millis(ms + 1);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            (2 * RATE) as f64 / start.elapsed().as_secs_f64()
        })
    };
    let (mut build, mut bytes, mut carried) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..4 {
        tokio::time::sleep(SNAPSHOT_INTERVAL).await;
        let t = Instant::now();
        let (snapshot, newest) = dashboard.next_snapshot(&filter, after);
        build.push(micros(t.elapsed()));
        bytes.push(snapshot.len() as f64 / 1024.0);
        let doc: Value = serde_json::from_str(&snapshot)?;
        carried.push(doc["events"].as_array().map_or(0, Vec::len) as f64);
        after = Some(newest);
    }
    let achieved = emitter.await?;
    drop(dashboard);
    bus.shutdown().await;
    build.sort_by(f64::total_cmp);
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    table.add(
        "13 dashboard",
        "events/s while snapshotting (target 10,000)",
        achieved,
        "ev/s",
        None,
    );
    table.add(
        "13 dashboard",
        "snapshot of 100 plugins: build + JSON, p50",
        percentile(&build, 0.5),
        "µs",
        None,
    );
    table.add(
        "13 dashboard",
        "snapshot of 100 plugins: size",
        max(&bytes),
        "KiB",
        None,
    );
    table.add(
        "13 dashboard",
        "events per snapshot (bounded at 50)",
        max(&carried),
        "events",
        None,
    );
    Ok(())
}

/// A `nats-server` with JetStream on a free loopback port and a temporary
/// store, for scenario 14; killed when dropped.
struct BenchNats {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl BenchNats {
    fn start() -> anyhow::Result<Option<BenchNats>> {
        let Some(bin) = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
        else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let child = std::process::Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let ports = dir.path().join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut server = BenchNats {
            child,
            url: String::new(),
            _dir: dir,
        };
        server.url = loop {
            let url = std::fs::read_to_string(&ports)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["nats"][0].as_str().map(str::to_owned));
            if let Some(url) = url {
                break url;
            }
            anyhow::ensure!(Instant::now() < deadline, "nats-server wrote no ports file");
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Some(server))
    }
}

impl Drop for BenchNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Scenario 14: NATS JetStream, on a real `nats-server` (Debian's) on
/// loopback. (a) Publishing: `emit` into the stream until every publish is
/// acknowledged. (b) Consuming the same events: a bare async-nats pull
/// consumer acknowledging each message (the engine's limit) against
/// token-counter on one host pulling them through its consumer (created with
/// `replay = "all"`, loaded from a warm cache). (c) Latency publish →
/// handled: misbehave answers each `bench.ping` with a follow-up whose
/// native handler stops the clock, on one host and on two sharing the
/// plugin.
/// Rounds of consuming in scenario 14 (bare, then through the plugin, in
/// turn): five keep the median clear of one slow round on a shared machine.
const CONSUME_ROUNDS: usize = 5;

async fn nats_scenarios(table: &mut Table, plugins: &Path, cache: &Path, events: u64) -> anyhow::Result<()> {
    use async_nats::jetstream::{self, consumer::pull};
    use futures_util::StreamExt;
    let Some(server) = BenchNats::start()? else {
        eprintln!("plugbus bench: nats-server is not installed (make setup-nats); scenario 14 skipped");
        return Ok(());
    };
    let nats = || plugbus::NatsOptions::new(&server.url);

    let filler = plugbus::Bus::builder().nats(nats()).build().await?;
    let t = Instant::now();
    for i in 0..events {
        filler.emit("model_responded", payload(i));
        // Emit outruns any server: stay within the 8,192-event publish queue.
        if i % 4096 == 4095 {
            filler.flush().await;
        }
    }
    filler.flush().await;
    let published = events as f64 / t.elapsed().as_secs_f64();
    let stats = filler.nats_status().map(|s| s.publish);
    filler.shutdown().await;
    anyhow::ensure!(
        stats.as_ref().is_some_and(|s| s.acked == events),
        "not every event reached the stream: {stats:?}"
    );
    table.add("14 nats", "publish: emit → stored, events/s", published, "ev/s", None);

    // The two consumers take turns over the same stored events, a fresh
    // consumer each round, and the medians are compared: one pass each is
    // at the mercy of whatever else the machine does in that half second.
    let js = jetstream::new(async_nats::connect(&server.url).await?);
    let stream = js.get_stream("PLUGBUS").await?;
    let dir = tempfile::tempdir()?;
    let (mut bare_rates, mut host_rates) = (Vec::new(), Vec::new());
    for round in 0..CONSUME_ROUNDS {
        // Each side is timed from its consumer's creation to its last ack.
        let t = Instant::now();
        let bare: jetstream::consumer::Consumer<pull::Config> = stream
            .create_consumer(pull::Config {
                durable_name: Some(format!("bench-bare-{round}")),
                filter_subject: "plugbus.events.>".into(),
                max_ack_pending: 1024,
                ..Default::default()
            })
            .await?;
        let mut messages = bare.stream().max_messages_per_batch(256).messages().await?;
        for _ in 0..events {
            let message = messages.next().await.context("the bare consumer's stream ended")?;
            message
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        bare_rates.push(events as f64 / t.elapsed().as_secs_f64());
        drop(messages);

        // A copy under a new name is a new consumer (`plugbus-tokens-<round>`)
        // that starts at the first stored event.
        for entry in std::fs::read_dir(dir.path())? {
            std::fs::remove_file(entry?.path())?;
        }
        let name = format!("tokens-{round}");
        let file = dir.path().join(format!("{name}.wasm"));
        std::fs::copy(plugins.join("token-counter.wasm"), &file)?;
        std::fs::write(dir.path().join(format!("{name}.toml")), "replay = \"all\"\n")?;
        // Compile once into the cache, without NATS, so the timed load is quick.
        open(dir.path(), cache).await?.shutdown().await;
        let bus = plugbus::Bus::builder().cache_dir(cache).nats(nats()).build().await?;
        let acked = |bus: &plugbus::Bus| {
            bus.nats_status()
                .and_then(|s| s.consumers.get(&name).map(|c| c.acked))
                .unwrap_or(0)
        };
        // Loading the plugin (from the warm cache) creates its consumer.
        let t = Instant::now();
        bus.load_plugin(&file).await?;
        while acked(&bus) < events {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(120),
                "{name} consumed {} of {events}",
                acked(&bus)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        host_rates.push(events as f64 / t.elapsed().as_secs_f64());
        bus.shutdown().await;
    }
    let ratios: Vec<f64> = host_rates.iter().zip(&bare_rates).map(|(h, b)| h / b).collect();
    tracing::info!(?bare_rates, ?host_rates, ?ratios, "consume rounds");
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    table.add(
        "14 nats",
        &format!("consume: events/s through one plugin, one host (vs bare async-nats consumer), median of {CONSUME_ROUNDS} alternating rounds"),
        median(host_rates),
        "ev/s",
        Some(median(bare_rates)),
    );

    let dir = tempfile::tempdir()?;
    std::fs::copy(plugins.join("misbehave.wasm"), dir.path().join("misbehave.wasm"))?;
    std::fs::write(
        dir.path().join("misbehave.toml"),
        "subscriptions = [\"bench.ping\"]\n[config]\nalways = \"count\"\n",
    )?;
    open(dir.path(), cache).await?.shutdown().await;
    let samples = events.min(2000);
    for hosts in [1usize, 2] {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let mut buses = Vec::new();
        for _ in 0..hosts {
            let bus = plugbus::Bus::builder()
                .plugin_dir(dir.path())
                .cache_dir(cache)
                .nats(nats())
                .build()
                .await?;
            let tx = tx.clone();
            bus.on("fixture.count", move |_| {
                let _ = tx.send(Instant::now());
            })?;
            buses.push(bus);
        }
        let mut latencies = Vec::with_capacity(samples as usize);
        for i in 0..samples {
            let sent = Instant::now();
            buses[0].emit("bench.ping", json!({"i": i}));
            let handled = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .context("no follow-up within 10 s")?
                .context("channel closed")?;
            latencies.push(micros(handled.duration_since(sent)));
        }
        for bus in &buses {
            bus.shutdown().await;
        }
        latencies.sort_by(f64::total_cmp);
        let label = if hosts == 1 { "one host" } else { "two hosts" };
        table.add(
            "14 nats",
            &format!("publish → handled p50, {label}"),
            percentile(&latencies, 0.5),
            "µs",
            None,
        );
        table.add(
            "14 nats",
            &format!("publish → handled p99, {label}"),
            percentile(&latencies, 0.99),
            "µs",
            None,
        );
    }
    drop(server);
    Ok(())
}

/// Most events the benches let wait for the log writer before the emitter
/// pauses: a quarter of its buffer, so the log is measured at what it
/// sustains without losing any rather than at how fast it can overflow.
const WRITER_BACKLOG: usize = 16_384;

/// Pauses the emitting thread while the log writer has more than
/// [`WRITER_BACKLOG`] events waiting.
pub(crate) fn wait_for_writer(bus: &plugbus::Bus) {
    while bus.log_status().is_some_and(|s| s.queued > WRITER_BACKLOG) {
        std::thread::sleep(Duration::from_micros(50));
    }
}
