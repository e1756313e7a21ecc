//! Scenario 16: OTLP ingest. Realistic GenAI spans (agent runs of one
//! `invoke_agent`, three `chat` calls and two `execute_tool` calls, with the
//! attributes pydantic-ai and OpenLLMetry send) in protobuf requests of 512
//! spans, exported one request after another (as one exporter does) into a
//! bus with the log on (`batched`), against a bare `prost` decode of the
//! same requests, alternated over rounds in one run; then from four
//! exporters at once, and the same events' durable publish alone.

use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value as Any};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;

use super::Table;

/// Spans per request: the OTel SDKs' default export batch.
const SPANS_PER_REQUEST: usize = 512;

/// Rounds alternating decode and ingest; the median of each is reported.
const ROUNDS: usize = 3;

/// Agents exporting at once in the concurrent measurement.
const EXPORTERS: usize = 4;

fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, Any::StringValue(value.into()))
}

/// One request of `SPANS_PER_REQUEST` spans; `n` makes its ids unique
/// (a repeat would be skipped as a retry, which is not what is measured).
fn request(n: u64) -> ExportTraceServiceRequest {
    let mut spans = Vec::with_capacity(SPANS_PER_REQUEST);
    let start = 1_780_000_000_000_000_000u64 + n * 1_000_000_000;
    let mut i = 0u64;
    while spans.len() < SPANS_PER_REQUEST {
        let trace = [(n + 1).to_be_bytes(), i.to_be_bytes()].concat();
        let root = (i << 8) | 1;
        let at = |k: u64| start + i * 10_000_000 + k * 1_000_000;
        let span = |id: u64, parent: Option<u64>, name: &str, t: (u64, u64), attributes: Vec<KeyValue>| Span {
            trace_id: trace.clone(),
            span_id: id.to_be_bytes().to_vec(),
            parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
            name: name.into(),
            kind: 3,
            start_time_unix_nano: at(t.0),
            end_time_unix_nano: at(t.1),
            attributes,
            ..Default::default()
        };
        for c in 0..3u64 {
            spans.push(span(
                root + 1 + c,
                Some(root),
                "chat gpt-4.1",
                (1 + 2 * c, 2 + 2 * c),
                vec![
                    text("gen_ai.operation.name", "chat"),
                    text("gen_ai.provider.name", "openai"),
                    text("gen_ai.system", "openai"),
                    text("gen_ai.request.model", "gpt-4.1"),
                    text("gen_ai.response.model", "gpt-4.1-2025-04-14"),
                    text("gen_ai.agent.name", "research-assistant"),
                    text("gen_ai.conversation.id", &format!("conv-{n}-{i}")),
                    kv("gen_ai.usage.input_tokens", Any::IntValue(1850 + c as i64 * 100)),
                    kv("gen_ai.usage.output_tokens", Any::IntValue(240)),
                    kv(
                        "gen_ai.response.finish_reasons",
                        Any::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                            values: vec![AnyValue {
                                value: Some(Any::StringValue("stop".into())),
                            }],
                        }),
                    ),
                    text("server.address", "api.openai.com"),
                ],
            ));
        }
        for t in 0..2u64 {
            spans.push(span(
                root + 4 + t,
                Some(root),
                "execute_tool web_search",
                (7 + t, 8 + t),
                vec![
                    text("gen_ai.operation.name", "execute_tool"),
                    text("gen_ai.tool.name", "web_search"),
                    text("gen_ai.tool.call.id", &format!("call_{i}_{t}")),
                    text("gen_ai.tool.type", "function"),
                    text(
                        "gen_ai.tool.call.arguments",
                        r#"{"query": "wasm sandbox isolation 2026"}"#,
                    ),
                ],
            ));
        }
        spans.push(span(
            root,
            None,
            "invoke_agent research-assistant",
            (0, 10),
            vec![
                text("gen_ai.operation.name", "invoke_agent"),
                text("gen_ai.agent.name", "research-assistant"),
                text("gen_ai.conversation.id", &format!("conv-{n}-{i}")),
            ],
        ));
        i += 1;
    }
    spans.truncate(SPANS_PER_REQUEST);
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "research-svc")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "pydantic-ai".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A bus with no plugins and its log in `dir`, `batched` as served by default.
async fn logged_bus(dir: &std::path::Path) -> anyhow::Result<plugbus::Bus> {
    logged_bus_with(dir, plugbus::Durability::Batched).await
}

/// A bus with no plugins and its log in `dir` under `durability`.
async fn logged_bus_with(dir: &std::path::Path, durability: plugbus::Durability) -> anyhow::Result<plugbus::Bus> {
    Ok(plugbus::Bus::builder()
        .log_dir(dir)
        .durability(durability)
        .build()
        .await?)
}

/// Median of a few samples.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(super) async fn ingest(table: &mut Table, events: u64) -> anyhow::Result<()> {
    // About `events` spans per round, at least 20 requests.
    let requests = (events as usize / SPANS_PER_REQUEST).max(20);
    let bodies: Vec<Vec<Vec<u8>>> = (0..ROUNDS)
        .map(|r| {
            (0..requests)
                .map(|q| request((r * requests + q) as u64).encode_to_vec())
                .collect()
        })
        .collect();
    let spans = (requests * SPANS_PER_REQUEST) as f64;
    let (mut decode_s, mut ingest_s, mut append_s, mut concurrent_s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut unsynced_s = Vec::new();
    for round in &bodies {
        let t = Instant::now();
        for body in round {
            std::hint::black_box(ExportTraceServiceRequest::decode(&body[..])?);
        }
        decode_s.push(t.elapsed().as_secs_f64());

        let log = tempfile::tempdir()?;
        let bus = logged_bus(log.path()).await?;
        let receiver = plugbus::otlp::Receiver::new(plugbus::otlp::MapOptions::default());
        let t = Instant::now();
        for body in round {
            let export = receiver
                .export(&bus, body, plugbus::otlp::Encoding::Protobuf, None)
                .await?;
            anyhow::ensure!(export.rejected.is_empty() && export.duplicates == 0, "{export:?}");
        }
        ingest_s.push(t.elapsed().as_secs_f64());
        bus.shutdown().await;

        // The same into a log under `off`: answered once written, not
        // synced: the receiver's own cost without the group commit's wait.
        let log = tempfile::tempdir()?;
        let bus = logged_bus_with(log.path(), plugbus::Durability::Off).await?;
        let t = Instant::now();
        for body in round {
            let export = receiver
                .export(&bus, body, plugbus::otlp::Encoding::Protobuf, None)
                .await?;
            anyhow::ensure!(export.rejected.is_empty(), "{export:?}");
        }
        unsynced_s.push(t.elapsed().as_secs_f64());
        bus.shutdown().await;

        // The same requests from EXPORTERS agents at once, each exporting
        // its share one request after another: the group commit then
        // serves several requests per sync.
        let log = tempfile::tempdir()?;
        let bus = logged_bus(log.path()).await?;
        let receiver = std::sync::Arc::new(plugbus::otlp::Receiver::new(plugbus::otlp::MapOptions::default()));
        let shares: Vec<Vec<Vec<u8>>> = (0..EXPORTERS)
            .map(|k| round.iter().skip(k).step_by(EXPORTERS).cloned().collect())
            .collect();
        let t = Instant::now();
        let tasks: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let (bus, receiver) = (bus.clone(), receiver.clone());
                tokio::spawn(async move {
                    for body in share {
                        receiver
                            .export(&bus, &body, plugbus::otlp::Encoding::Protobuf, None)
                            .await?;
                    }
                    Ok::<_, plugbus::otlp::OtlpError>(())
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        concurrent_s.push(t.elapsed().as_secs_f64());
        bus.shutdown().await;

        // The same events, already decoded and mapped, published durably:
        // what storing them costs, to tell decode + mapping from the log.
        let mut memo = plugbus::otlp::genai::TraceMemo::default();
        let mapped: Vec<Vec<plugbus::Event>> = round
            .iter()
            .map(|body| {
                let request = ExportTraceServiceRequest::decode(&body[..])?;
                Ok(plugbus::otlp::map_request(&request, plugbus::otlp::MapOptions::default(), &mut memo).events)
            })
            .collect::<anyhow::Result<_>>()?;
        let log = tempfile::tempdir()?;
        let bus = logged_bus(log.path()).await?;
        let t = Instant::now();
        for events in mapped {
            bus.publish_once_all(events).await?;
        }
        append_s.push(t.elapsed().as_secs_f64());
        bus.shutdown().await;
    }
    let (decode, ingest, append, concurrent, unsynced) = (
        median(decode_s),
        median(ingest_s),
        median(append_s),
        median(concurrent_s),
        median(unsynced_s),
    );
    table.add(
        "16 otlp ingest",
        "spans/s, protobuf batches of 512, log batched (vs bare decode)",
        spans / ingest,
        "spans/s",
        Some(spans / decode),
    );
    table.add(
        "16 otlp ingest",
        "spans/s, 4 exporters at once (vs bare decode)",
        spans / concurrent,
        "spans/s",
        Some(spans / decode),
    );
    table.add(
        "16 otlp ingest",
        "time per span: ingest (vs bare prost decode)",
        ingest / spans * 1e6,
        "µs",
        Some(decode / spans * 1e6),
    );
    table.add(
        "16 otlp ingest",
        "time per span: ingest into a log under `off` (vs bare decode)",
        unsynced / spans * 1e6,
        "µs",
        Some(decode / spans * 1e6),
    );
    table.add(
        "16 otlp ingest",
        "time per span: ingest (vs durable publish of as many events)",
        ingest / spans * 1e6,
        "µs",
        Some(append / spans * 1e6),
    );
    Ok(())
}
