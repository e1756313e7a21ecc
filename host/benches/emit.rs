//! Criterion benchmarks: the emitter's cost and a plugin's throughput, each
//! beside its baseline in the same run (`cargo bench -p plugbus`, or
//! `make criterion`). `plugbus bench` covers the other scenarios (runaway
//! tax, recovery, start-up, languages, the Python peer) and prints ratios.
//!
//! Needs the built plugins: `make plugins` (token-counter.wasm in
//! plugins/dist, or the directory in `PLUGBUS_WASM_DIR`). Without them the
//! benchmarks are skipped with a note.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use plugbus::Bus;
use serde_json::Value;

mod payload;
use payload::payload;

/// Events between flushes: far below the default queue of 1024, so no event
/// is ever dropped while being measured.
const BATCH: u64 = 512;

fn plugins_dir() -> PathBuf {
    std::env::var_os("PLUGBUS_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist"))
}

fn runtime() -> tokio::runtime::Runtime {
    // Two workers: the machines these numbers come from have two cores.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A bus over `n` copies of token-counter, sharing one artifact cache.
fn bus_with(rt: &tokio::runtime::Runtime, n: usize, cache: &std::path::Path) -> (Bus, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    for i in 0..n {
        std::fs::copy(
            plugins_dir().join("token-counter.wasm"),
            dir.path().join(format!("tc-{i:03}.wasm")),
        )
        .expect("copy token-counter.wasm");
    }
    let bus = rt
        .block_on(Bus::builder().plugin_dir(dir.path()).cache_dir(cache).build())
        .expect("bus");
    (bus, dir)
}

/// Emit latency with 0, 1 and 10 token-counter plugins subscribed, beside
/// `try_send` to as many bounded queues (the floor). Only the emit is timed;
/// the plugins drain between batches, outside the measurement.
fn emit_latency(c: &mut Criterion) {
    if !plugins_dir().join("token-counter.wasm").is_file() {
        eprintln!(
            "skipping: {} has no token-counter.wasm (make plugins)",
            plugins_dir().display()
        );
        return;
    }
    let rt = runtime();
    let cache = tempfile::tempdir().expect("cache dir");
    let mut group = c.benchmark_group("emit");
    for n in [0usize, 1, 10] {
        let (bus, _dir) = bus_with(&rt, n, cache.path());
        group.bench_with_input(BenchmarkId::new("plugbus", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for i in 0..iters {
                    let p = payload(i);
                    let t = Instant::now();
                    bus.emit("model_responded", p);
                    spent += t.elapsed();
                    if i % BATCH == BATCH - 1 {
                        rt.block_on(bus.flush());
                    }
                }
                rt.block_on(bus.flush());
                spent
            })
        });
        rt.block_on(bus.shutdown());
        group.bench_with_input(BenchmarkId::new("mpsc_floor", n), &n, |b, &n| {
            let (senders, mut rxs): (Vec<_>, Vec<_>) =
                (0..n).map(|_| tokio::sync::mpsc::channel::<Arc<Value>>(1024)).unzip();
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for i in 0..iters {
                    let p = payload(i);
                    let t = Instant::now();
                    let event = Arc::new(p);
                    for tx in &senders {
                        let _ = tx.try_send(event.clone());
                    }
                    spent += t.elapsed();
                    if i % BATCH == BATCH - 1 {
                        for rx in &mut rxs {
                            while rx.try_recv().is_ok() {}
                        }
                    }
                }
                for rx in &mut rxs {
                    while rx.try_recv().is_ok() {}
                }
                spent
            })
        });
    }
    group.finish();
}

/// Events/s through one token-counter plugin, beside a native handler doing
/// the same work (parse the payload, add up the tokens): emit and wait until
/// every event is handled.
fn handler_throughput(c: &mut Criterion) {
    if !plugins_dir().join("token-counter.wasm").is_file() {
        return;
    }
    let rt = runtime();
    let cache = tempfile::tempdir().expect("cache dir");
    let mut group = c.benchmark_group("handler");
    group.throughput(Throughput::Elements(BATCH));

    let (wasm, _dir) = bus_with(&rt, 1, cache.path());
    group.bench_function("wasm_token_counter", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                wasm.emit("model_responded", payload(i));
            }
            rt.block_on(wasm.flush());
        })
    });
    rt.block_on(wasm.shutdown());

    let native = rt.block_on(Bus::builder().no_cache().build()).expect("bus");
    let total = Arc::new(AtomicU64::new(0));
    let sum = total.clone();
    native
        .on("model_responded", move |e| {
            if let Ok(v) = serde_json::from_str::<Value>(e.payload_json()) {
                let u = &v["usage"];
                let n = u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0);
                sum.fetch_add(n, Ordering::Relaxed);
            }
        })
        .expect("subscribe");
    group.bench_function("native_token_counter", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                native.emit("model_responded", payload(i));
            }
            rt.block_on(native.flush());
        })
    });
    group.finish();
}

/// Serving the next event right after a trap (a fresh instance is built
/// first), beside serving it normally: the difference is the recovery cost.
fn recovery(c: &mut Criterion) {
    let misbehave = plugins_dir().join("misbehave.wasm");
    if !misbehave.is_file() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(&misbehave, dir.path().join("misbehave.wasm")).expect("copy misbehave.wasm");
    // Quarantine off: every trap is followed by a rebuild, never by a pause.
    std::fs::write(dir.path().join("misbehave.toml"), "[limits]\nquarantine_after = 0\n").expect("manifest");
    let bus = rt
        .block_on(Bus::builder().plugin_dir(dir.path()).no_cache().build())
        .expect("bus");
    let mut group = c.benchmark_group("recovery");
    for (name, first) in [("after_trap", "misbehave.unreachable"), ("normal", "misbehave.ok")] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    rt.block_on(bus.emit_and_wait(first, Value::Null));
                    let t = Instant::now();
                    rt.block_on(bus.emit_and_wait("misbehave.ok", Value::Null));
                    spent += t.elapsed();
                }
                spent
            })
        });
    }
    group.finish();
    rt.block_on(bus.shutdown());
}

criterion_group!(benches, emit_latency, handler_throughput, recovery);
criterion_main!(benches);
