//! Scenario 18: outbound requests. The `fetcher` fixture posts one small
//! JSON body per event to a local server; per request, `emit_and_wait` of
//! that event (the whole handling: dispatch, the guest's `wasi:http` calls,
//! the grant and address checks, the request, the journal) against the same
//! request from a native tokio client (hyper, one connection per request, as
//! the host sends them). Rounds alternate the two in one run; the medians of
//! their p50s are reported; and the request's own share: the event minus
//! the same event making no request. Then the same with the journal on disk
//! (a log with `batched` durability: one `fdatasync` per request) against
//! memory. Then nine observers beside a tenth that waits 2 s on every request
//! (its server is slow), against the nine alone: their throughput and the
//! emitter's p99. Last, `otlp-export`'s throughput: `model_responded` events turned
//! into spans and posted in batches of 512 to the same local server.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use serde_json::json;

use super::Table;

/// Requests per round and side: enough for a stable p50, few enough that a
/// fsync per request stays within seconds.
const REQUESTS: usize = 400;
/// Rounds alternating the native client and the plugin.
const ROUNDS: usize = 3;
/// The request body: an alert's size.
const BODY: &str = r#"{"text":"Budget exceeded (run run-1): $0.0712 spent of $0.05"}"#;

/// Echoes a POST's body.
async fn serve() -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(|body: String| async move { body }))
        .route("/v1/traces", axum::routing::post(|_body: String| async move { "{}" }))
        .route(
            "/slow",
            axum::routing::post(|| async {
                tokio::time::sleep(SLOW).await;
                "late"
            }),
        );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// One request from a native client: connect, HTTP/1.1, post, read the body.
async fn native_request(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = http::Request::post("/hook")
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from_static(BODY.as_bytes())))?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(body.len() == BODY.len(), "echo of {} bytes", body.len());
    Ok(())
}

fn p50(mut samples: Vec<Duration>) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// p50 of one event's handling, each event making one request (none when
/// `addr` is `None`: the event's own cost), in µs.
async fn plugin_p50(bus: &plugbus::Bus, addr: Option<std::net::SocketAddr>) -> anyhow::Result<f64> {
    let requests = match addr {
        Some(addr) => json!([{ "method": "POST", "url": format!("http://{addr}/hook"), "body": BODY }]),
        None => json!([]),
    };
    let mut samples = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        // No `fetched` follow-up: the two events differ by the request alone.
        let event = json!({ "requests": requests, "report": false });
        let t = Instant::now();
        let report = bus.emit_and_wait("fetch", event).await;
        samples.push(t.elapsed());
        anyhow::ensure!(
            report.outcome("fetcher") == Some(&plugbus::Outcome::Ok),
            "fetcher failed: {report:?}"
        );
    }
    let counts = bus
        .plugins()
        .into_iter()
        .find_map(|p| p.http)
        .context("fetcher has no request counters")?;
    anyhow::ensure!(counts.failed == 0 && counts.refused == 0, "requests failed: {counts:?}");
    Ok(p50(samples))
}

/// How long the slow server takes to answer (the issue's figure).
const SLOW: Duration = Duration::from_secs(2);
/// Observers beside the one waiting on the slow server.
const OTHERS: usize = 9;

/// Nine token-counters' throughput and the emitter's p99, beside a tenth
/// plugin that waits `SLOW` on every request it makes (`slow = true`) or
/// without it: `(events/s, emit p99 µs)`. A `fetch` every 500 events keeps
/// the slow one waiting throughout.
async fn beside_a_slow_plugin(
    files: (&Path, &Path),
    cache: &Path,
    addr: std::net::SocketAddr,
    events: u64,
    slow: bool,
) -> anyhow::Result<(f64, f64)> {
    let (tokens, fetcher) = files;
    let dir = tempfile::tempdir()?;
    for i in 0..OTHERS {
        std::fs::copy(tokens, dir.path().join(format!("counter-{i}.wasm")))?;
        std::fs::write(
            dir.path().join(format!("counter-{i}.toml")),
            "[limits]\nqueue_capacity = 1048576\n",
        )?;
    }
    if slow {
        std::fs::copy(fetcher, dir.path().join("fetcher.wasm"))?;
        std::fs::write(
            dir.path().join("fetcher.toml"),
            format!("[http]\nallow = [\"http://{addr}\"]\ntimeout_ms = 600000\nio_budget_ms = 600000\n"),
        )?;
    }
    let bus = super::open(dir.path(), cache).await?;
    let url = format!("http://{addr}/slow");
    let mut emits = Vec::with_capacity(events as usize);
    let t = Instant::now();
    for i in 0..events {
        if i % 500 == 0 {
            bus.emit("fetch", json!({ "requests": [{ "method": "POST", "url": url }] }));
        }
        let e = Instant::now();
        bus.emit(
            "model_responded",
            json!({"model": "gpt-4.1-mini", "usage": {"prompt_tokens": 900, "completion_tokens": 120}}),
        );
        emits.push(e.elapsed());
    }
    loop {
        let done = bus
            .plugins()
            .iter()
            .filter(|p| p.name.starts_with("counter-") && p.stats.delivered + p.stats.dropped >= events)
            .count();
        if done == OTHERS {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = t.elapsed();
    let dropped: u64 = bus
        .plugins()
        .iter()
        .filter(|p| p.name.starts_with("counter-"))
        .map(|p| p.stats.dropped)
        .sum();
    bus.shutdown_with(Duration::ZERO).await;
    anyhow::ensure!(dropped == 0, "{dropped} events dropped");
    emits.sort_unstable();
    let p99 = emits[emits.len() * 99 / 100].as_secs_f64() * 1e6;
    Ok((events as f64 / elapsed.as_secs_f64(), p99))
}

/// Spans per `otlp-export` batch in the throughput run: the OTel SDKs'
/// default export batch.
const EXPORT_BATCH: u64 = 512;

/// Events (spans) per second through `otlp-export`, from the first emit
/// until its query says every span was sent.
async fn export_throughput(file: &Path, cache: &Path, addr: std::net::SocketAddr, events: u64) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    std::fs::copy(file, dir.path().join("otlp-export.wasm"))?;
    std::fs::write(
        dir.path().join("otlp-export.toml"),
        format!(
            "[limits]\nqueue_capacity = 65536\n[config]\nendpoint = \"http://{addr}/v1/traces\"\nbatch_spans = \"{EXPORT_BATCH}\"\nbatch_ms = \"3600000\"\n\
             [http]\nallow = [\"http://{addr}\"]\nper_second = 10000\n"
        ),
    )?;
    let bus = super::open(dir.path(), cache).await?;
    let events = (events / EXPORT_BATCH).max(1) * EXPORT_BATCH;
    let t = Instant::now();
    for i in 0..events {
        bus.publish(
            plugbus::Event::new(
                "model_responded",
                json!({"model": "gpt-4.1-mini", "provider": "openai", "usage": {"prompt_tokens": 900 + i % 100, "completion_tokens": 120}, "latency_ms": 640}),
            )
            .with_correlation_id(format!("run-{}", i % 64)),
        );
        if i % 4096 == 4095 {
            bus.flush().await;
        }
    }
    bus.flush().await;
    let elapsed = t.elapsed();
    let answer = bus
        .query("otlp-export", "{}")
        .await
        .map_err(|e| anyhow::anyhow!("query: {e}"))?;
    let sent = serde_json::from_str::<serde_json::Value>(answer.answer.get())?["sent"]
        .as_u64()
        .unwrap_or(0);
    bus.shutdown().await;
    anyhow::ensure!(sent == events, "otlp-export sent {sent} of {events} spans");
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// Scenario 18 (skipped when the `fetcher` fixture is not built).
pub async fn outbound(table: &mut Table, dirs: [&Path; 2], cache: &Path, events: u64) -> anyhow::Result<()> {
    let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|f| f.is_file());
    let Some(file) = find("fetcher.wasm") else {
        eprintln!("plugbus bench: skipping 18: fetcher.wasm not built (make plugins)");
        return Ok(());
    };
    let (addr, server) = serve().await?;
    let dir = tempfile::tempdir()?;
    std::fs::copy(&file, dir.path().join("fetcher.wasm"))?;
    std::fs::write(
        dir.path().join("fetcher.toml"),
        format!("[http]\nallow = [\"http://{addr}\"]\nper_second = 10000\n"),
    )?;
    let log = tempfile::tempdir()?;
    let memory = super::open(dir.path(), cache).await?;
    let logged = super::open_logged(dir.path(), cache, log.path(), plugbus::Durability::Batched).await?;
    let (mut native, mut plugin, mut journaled, mut bare) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut samples = Vec::with_capacity(REQUESTS);
        for _ in 0..REQUESTS {
            let t = Instant::now();
            native_request(addr).await?;
            samples.push(t.elapsed());
        }
        native.push(p50(samples));
        plugin.push(plugin_p50(&memory, Some(addr)).await?);
        journaled.push(plugin_p50(&logged, Some(addr)).await?);
        bare.push(plugin_p50(&memory, None).await?);
    }
    memory.shutdown().await;
    logged.shutdown().await;
    let beside = match find("token-counter.wasm") {
        Some(tokens) => {
            let (mut with, mut without) = (Vec::new(), Vec::new());
            // Each side goes first in turn: the order itself showed in the figures.
            for round in 0..ROUNDS + 1 {
                for slow in [round % 2 == 1, round % 2 == 0] {
                    let run = beside_a_slow_plugin((&tokens, &file), cache, addr, events, slow).await?;
                    if slow { with.push(run) } else { without.push(run) }
                }
            }
            let pick = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(v.iter().map(f).collect());
            Some((
                (pick(&with, |r| r.0), pick(&without, |r| r.0)),
                (pick(&with, |r| r.1), pick(&without, |r| r.1)),
            ))
        }
        None => None,
    };
    let spans = match find("otlp-export.wasm") {
        Some(export) => Some(export_throughput(&export, cache, addr, events).await?),
        None => {
            eprintln!("plugbus bench: skipping otlp-export: otlp-export.wasm not built");
            None
        }
    };
    server.abort();
    let (native, plugin, journaled, bare) = (median(native), median(plugin), median(journaled), median(bare));
    table.add(
        "18 outbound http",
        "p50 per request: plugin event, journal in memory (vs native tokio client)",
        plugin,
        "µs",
        Some(native),
    );
    table.add(
        "18 outbound http",
        "p50 per request: plugin event minus the same event making no request (vs native)",
        plugin - bare,
        "µs",
        Some(native),
    );
    table.add(
        "18 outbound http",
        "p50 per request: plugin event, journal on disk (vs in memory)",
        journaled,
        "µs",
        Some(plugin),
    );
    if let Some(((with, without), (p99_with, p99_without))) = beside {
        table.add(
            "18 outbound http",
            "9 observers' events/s beside a 10th waiting 2 s per request (vs without it)",
            with,
            "events/s",
            Some(without),
        );
        table.add(
            "18 outbound http",
            "emit p99 beside a plugin waiting 2 s per request (vs without it)",
            p99_with,
            "µs",
            Some(p99_without),
        );
    }
    if let Some(spans) = spans {
        table.add(
            "18 outbound http",
            "otlp-export: model events exported as spans, batches of 512, local receiver",
            spans,
            "spans/s",
            None,
        );
    }
    Ok(())
}
