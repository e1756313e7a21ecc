//! OpenTelemetry in: OTLP/HTTP requests built as exporters build them
//! (opentelemetry-proto's messages, protobuf or OTLP JSON, gzip) reach a
//! real bus in-process and a real `plugbus serve`; GenAI spans become the
//! events plugins understand, a retried export is stored once (across a
//! restart, and across hosts on NATS), and bad requests are refused with
//! their reason while nothing of them is stored.

use std::io::Write as _;
use std::path::Path;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value as Any};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use plugbus::otlp::{Encoding, MapOptions, Receiver};
use prost::Message as _;
use serde_json::{Value, json};

use crate::support::{self, Recorder};

/// The Unix time (ns) the synthetic sessions start at.
const T0: u64 = 1_780_000_000_000_000_000;
const MS: u64 = 1_000_000;

pub fn attr(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub fn text(key: &str, value: &str) -> KeyValue {
    attr(key, Any::StringValue(value.into()))
}

pub fn int(key: &str, value: i64) -> KeyValue {
    attr(key, Any::IntValue(value))
}

/// A span of trace `trace` (a small number made into 16 bytes).
pub fn span(
    trace: u64,
    id: u64,
    parent: Option<u64>,
    name: &str,
    start_ms: u64,
    end_ms: u64,
    attributes: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: [trace.to_be_bytes(), 0xfeed_u64.to_be_bytes()].concat(),
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: name.into(),
        kind: 3,
        start_time_unix_nano: T0 + start_ms * MS,
        end_time_unix_nano: T0 + end_ms * MS,
        attributes,
        ..Default::default()
    }
}

pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "test-instrumentation".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One agent run as an instrumented framework reports it, children before
/// their parent (spans are exported as they end): two model calls, a tool
/// that works, a tool that fails, the agent span last. Trace `trace`.
pub fn agent_session(trace: u64) -> Vec<Span> {
    let root = trace * 100;
    vec![
        span(
            trace,
            root + 1,
            Some(root),
            "chat gpt-4.1-mini",
            10,
            830,
            vec![
                text("gen_ai.operation.name", "chat"),
                text("gen_ai.provider.name", "openai"),
                text("gen_ai.request.model", "gpt-4.1-mini"),
                text("gen_ai.response.model", "gpt-4.1-mini-2025-04-14"),
                int("gen_ai.usage.input_tokens", 1850),
                int("gen_ai.usage.output_tokens", 240),
                attr(
                    "gen_ai.response.finish_reasons",
                    Any::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                        values: vec![AnyValue {
                            value: Some(Any::StringValue("tool_calls".into())),
                        }],
                    }),
                ),
            ],
        ),
        span(
            trace,
            root + 2,
            Some(root),
            "execute_tool web_search",
            840,
            2080,
            vec![
                text("gen_ai.operation.name", "execute_tool"),
                text("gen_ai.tool.name", "web_search"),
                text("gen_ai.tool.call.id", "call_1"),
                text("gen_ai.tool.call.arguments", r#"{"query": "wasm sandbox isolation"}"#),
            ],
        ),
        Span {
            status: Some(Status {
                code: 2,
                message: "connection reset".into(),
            }),
            ..span(
                trace,
                root + 3,
                Some(root),
                "execute_tool fetch_url",
                2100,
                2740,
                vec![
                    text("gen_ai.operation.name", "execute_tool"),
                    text("gen_ai.tool.name", "fetch_url"),
                    text("error.type", "ConnectionError"),
                ],
            )
        },
        span(
            trace,
            root + 4,
            Some(root),
            "chat gpt-4.1",
            2750,
            5850,
            vec![
                text("gen_ai.operation.name", "chat"),
                text("gen_ai.system", "openai"),
                text("gen_ai.request.model", "gpt-4.1"),
                int("gen_ai.usage.prompt_tokens", 6200),
                int("gen_ai.usage.completion_tokens", 910),
                int("gen_ai.usage.cache_read.input_tokens", 4000),
            ],
        ),
        span(
            trace,
            root,
            None,
            "invoke_agent research-assistant",
            0,
            6000,
            vec![
                text("gen_ai.operation.name", "invoke_agent"),
                text("gen_ai.agent.name", "research-assistant"),
                text("gen_ai.agent.id", "agent-7"),
            ],
        ),
        // Not a GenAI span: dropped (or `otel.span` with --otlp-all).
        span(
            trace,
            root + 5,
            Some(root),
            "GET /search",
            900,
            2000,
            vec![text("http.request.method", "GET")],
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genai_spans_become_the_events_plugins_understand_in_time_order() {
    let bus = plugbus::Bus::builder().build().await.unwrap();
    let seen = Recorder::attach(&bus, "**");
    let receiver = Receiver::new(MapOptions::default());
    let body = request("research-svc", agent_session(7)).encode_to_vec();
    let export = receiver.export(&bus, &body, Encoding::Protobuf, None).await.unwrap();
    assert_eq!((export.spans, export.mapped, export.dropped), (6, 5, 1));
    assert!(export.rejected.is_empty() && export.duplicates == 0);
    assert_eq!(
        export.published, 8,
        "two events per tool and agent span, one per model call"
    );
    bus.flush().await;
    let events = seen.events();
    let names: Vec<&str> = events.iter().map(|e| e.name()).collect();
    assert_eq!(
        names,
        [
            "agent.run_started",
            "model_responded",
            "tool.called",
            "tool.result",
            "tool.called",
            "tool.result",
            "model_responded",
            "agent.run_finished"
        ],
        "the agent's start comes first although its span came last"
    );
    let trace = hex(&[7u64.to_be_bytes(), 0xfeed_u64.to_be_bytes()].concat());
    for e in &events {
        assert_eq!(
            e.correlation_id(),
            Some(trace.as_str()),
            "no conversation id: the trace id"
        );
        assert_eq!(e.source(), "research-svc");
        assert_eq!(
            e.payload()["agent"],
            "research-assistant",
            "{}: inherited from invoke_agent",
            e.name()
        );
        assert_eq!(e.payload()["otel"]["trace_id"], trace.as_str());
    }
    let times: Vec<u64> = events.iter().map(|e| e.time_unix_nanos()).collect();
    assert!(times.is_sorted(), "{times:?}");
    assert_eq!(times[0], T0, "event time is the span's, not arrival's");

    let first = &events[1];
    assert_eq!(first.id(), format!("otel-{trace}-{}", hex(&701u64.to_be_bytes())));
    let p = first.payload();
    assert_eq!(p["model"], "gpt-4.1-mini-2025-04-14", "the response model wins");
    assert_eq!(p["request_model"], "gpt-4.1-mini");
    assert_eq!(p["provider"], "openai");
    assert_eq!(p["usage"], json!({"prompt_tokens": 1850, "completion_tokens": 240}));
    assert_eq!(p["latency_ms"], 820.0);
    assert_eq!(p["finish_reasons"], json!(["tool_calls"]));
    assert_eq!(p["otel"]["parent_span_id"], hex(&700u64.to_be_bytes()));
    assert!(p.get("cost_usd").is_none() && p.get("error").is_none());

    let second_call = events[6].payload();
    assert_eq!(second_call["provider"], "openai", "the older gen_ai.system");
    assert_eq!(
        second_call["usage"],
        json!({"prompt_tokens": 6200, "completion_tokens": 910, "cache_read_tokens": 4000}),
        "the older prompt/completion names, and cache reads"
    );

    assert_eq!(
        events[2].payload()["args"],
        json!({"query": "wasm sandbox isolation"}),
        "JSON content is JSON"
    );
    assert_eq!(
        events[2].id(),
        format!("otel-{trace}-{}-start", hex(&702u64.to_be_bytes()))
    );
    assert_eq!(events[3].payload()["latency_ms"], 1240.0);
    assert!(events[3].payload().get("error").is_none());
    assert_eq!(
        events[5].payload()["error"],
        "ConnectionError",
        "error.type names the failure"
    );
    assert_eq!(events[5].payload()["otel"]["status"], "error");
    assert_eq!(events[5].payload()["otel"]["status_message"], "connection reset");
    let finished = events[7].payload();
    assert_eq!(finished["status"], "completed");
    assert_eq!(finished["agent_id"], "agent-7");
    assert_eq!(finished["duration_ms"], 6000.0);

    // --otlp-all: the HTTP span passes through; GenAI spans map as before.
    let all = Receiver::new(MapOptions { all_spans: true });
    let body = request("research-svc", agent_session(8)).encode_to_vec();
    let export = all.export(&bus, &body, Encoding::Protobuf, None).await.unwrap();
    assert_eq!((export.mapped, export.dropped, export.published), (6, 0, 9));
    bus.flush().await;
    let passed = seen.named("otel.span");
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0].payload()["name"], "GET /search");
    assert_eq!(passed[0].payload()["attributes"], json!({"http.request.method": "GET"}));
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_id_on_any_span_of_a_trace_correlates_the_whole_run_across_requests() {
    let bus = plugbus::Bus::builder().build().await.unwrap();
    let seen = Recorder::attach(&bus, "**");
    let receiver = Receiver::new(MapOptions::default());
    let mut spans = agent_session(9);
    let agent = spans.remove(4);
    // The first request: only the agent span carries the conversation id,
    // and it comes in a later request than the model calls of one export.
    let first = request("svc", spans[..2].to_vec());
    let mut agent = agent;
    agent.attributes.push(text("gen_ai.conversation.id", "conv-42"));
    let second = request("svc", vec![agent, spans[2].clone()]);
    let third = request("svc", vec![spans[3].clone()]);
    for body in [first, second, third] {
        receiver
            .export(&bus, &body.encode_to_vec(), Encoding::Protobuf, None)
            .await
            .unwrap();
    }
    bus.flush().await;
    let correlations: Vec<Option<String>> = seen
        .events()
        .iter()
        .map(|e| e.correlation_id().map(str::to_owned))
        .collect();
    let trace = hex(&[9u64.to_be_bytes(), 0xfeed_u64.to_be_bytes()].concat());
    // Before any span of the trace named the conversation: the trace id.
    assert_eq!(
        correlations[..3],
        [Some(trace.clone()), Some(trace.clone()), Some(trace)]
    );
    assert!(
        correlations[3..].iter().all(|c| c.as_deref() == Some("conv-42")),
        "once named, the trace's spans in that request and later ones are the conversation: {correlations:?}"
    );
    bus.shutdown().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn post_traces(addr: &str, content_type: &str, encoding: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(encoding) = encoding {
        headers.push(("Content-Encoding", encoding));
    }
    support::http_with(addr, "POST", "/v1/traces", &headers, body)
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error answer in protobuf.
/// Written here from `google/rpc/status.proto`, deliberately not the
/// receiver's own type: the test checks the wire form an exporter decodes,
/// not that the receiver agrees with itself.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// `POST /v1/traces` with the answer's status, `Content-Type` and body as
/// bytes (a protobuf `Status` is not text).
fn post_traces_raw(addr: &str, content_type: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before reading all of a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, raw[split + 4..].to_vec())
}

/// The events in `log`, as `plugbus log show --json` prints them.
fn logged(log: &Path) -> Vec<Value> {
    let out = support::plugbus(&["log", "show", "--json", "--log", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &Value| !e["name"].as_str().unwrap().starts_with("plugbus."))
        .collect()
}

#[test]
fn a_retried_export_is_stored_once_even_after_a_restart() {
    let plugins = support::plugin_dir(&["console-logger"]);
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let body = gzip(&request("svc", agent_session(11)).encode_to_vec());
    {
        let (served, addr, _stderr) = support::serve_logged(plugins.path(), &log);
        for attempt in 0..2 {
            let (status, answer) = post_traces(&addr, "application/x-protobuf", Some("gzip"), &body);
            assert_eq!(status, 200, "attempt {attempt}: {answer}");
            assert!(answer.is_empty(), "full success is an empty ExportTraceServiceResponse");
        }
        let (_, metrics) = support::http(&addr, "GET", "/metrics", b"");
        for line in [
            "plugbus_otlp_events_total 8",
            "plugbus_otlp_duplicates_total 8",
            "plugbus_otlp_spans_total{outcome=\"mapped\"} 10",
            "plugbus_otlp_spans_total{outcome=\"dropped\"} 2",
        ] {
            assert!(metrics.contains(line), "no `{line}` in {metrics}");
        }
        // SIGKILL: the next host knows the ids only from the log.
        drop(served);
    }
    assert_eq!(logged(&log).len(), 8);
    let (served, addr, _stderr) = support::serve_logged(plugins.path(), &log);
    let (status, answer) = post_traces(&addr, "application/x-protobuf", Some("gzip"), &body);
    assert_eq!(status, 200, "{answer}");
    // The same spans as OTLP JSON: the same ids, so also not stored again.
    let json_body = serde_json::to_vec(&request("svc", agent_session(11))).unwrap();
    let (status, answer) = post_traces(&addr, "application/json", None, &json_body);
    assert_eq!((status, answer.as_str()), (200, "{}"), "full success in JSON");
    let events = logged(&log);
    let ids: std::collections::BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!((events.len(), ids.len()), (8, 8), "each span's events stored once");
    // A new span of the same trace is stored.
    let more = request(
        "svc",
        vec![span(
            11,
            1199,
            Some(1100),
            "chat gpt-4.1",
            7000,
            7100,
            vec![text("gen_ai.operation.name", "chat")],
        )],
    );
    let (status, _) = post_traces(&addr, "application/x-protobuf", None, &more.encode_to_vec());
    assert_eq!(status, 200);
    assert_eq!(logged(&log).len(), 9);
    support::terminate(&served);
}

#[test]
fn bad_otlp_requests_are_refused_with_their_reason_and_store_nothing() {
    let plugins = support::plugin_dir(&["console-logger"]);
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let (served, addr, _stderr) = support::serve_logged(plugins.path(), &log);

    let refused = |content_type: &str, encoding: Option<&str>, body: &[u8], status: u16, reason: &str| {
        let (got, answer) = post_traces(&addr, content_type, encoding, body);
        assert_eq!(got, status, "{answer}");
        assert!(answer.contains(reason), "`{reason}` not in {answer}");
    };
    refused("application/json", None, b"{\"resourceSpans\": [", 400, "not OTLP JSON");
    refused(
        "application/json",
        None,
        b"{\"resourceSpans\": [{\"scopeSpans\": [{\"spans\": [{\"traceId\": \"zz\"}]}]}]}",
        400,
        "not OTLP JSON",
    );
    // Protobuf errors come as a google.rpc.Status: the reason is its text.
    refused(
        "application/x-protobuf",
        None,
        &[0xff, 0xff, 0xff, 0xff],
        400,
        "not an ExportTraceServiceRequest",
    );
    refused("text/plain", None, b"hello", 415, "unsupported content type text/plain");
    refused(
        "application/json",
        Some("br"),
        b"{}",
        415,
        "unsupported content encoding br",
    );
    refused("application/json", Some("gzip"), b"not gzip at all", 400, "gzip");
    // A gzip bomb: 80 MiB of zeros in ~80 KiB.
    let bomb = gzip(&vec![0u8; 80 << 20]);
    refused("application/x-protobuf", Some("gzip"), &bomb, 413, "inflates past");
    // Over the body cap as sent, just or by far: a 413 with a
    // google.rpc.Status (RESOURCE_EXHAUSTED) in the request's encoding, as
    // for any other refusal, not the HTTP server's plain-text rejection.
    for size in [plugbus::otlp::MAX_BODY + 1, plugbus::otlp::MAX_BODY + (1 << 20)] {
        let huge = vec![b' '; size];
        let (status, content_type, answer) = post_traces_raw(&addr, "application/json", &huge);
        assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
        assert_eq!(content_type, "application/json", "{}", String::from_utf8_lossy(&answer));
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(answer["code"], 8, "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("request too large"),
            "{answer}"
        );
        let (status, content_type, answer) = post_traces_raw(&addr, "application/x-protobuf", &huge);
        assert_eq!(status, 413, "{}", String::from_utf8_lossy(&answer));
        assert_eq!(
            content_type,
            "application/x-protobuf",
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let answer = RpcStatus::decode(answer.as_slice()).unwrap();
        assert_eq!(answer.code, 8, "{answer:?}");
        assert!(answer.message.contains("request too large"), "{answer:?}");
    }
    assert!(logged(&log).is_empty(), "nothing of a refused request is stored");

    // Spans with no end time, bad ids, ends before starts: refused alone,
    // as the partial success says; odd enum values and absurd token counts
    // do not stop a span.
    let mut no_end = span(
        12,
        1201,
        None,
        "chat a",
        0,
        5,
        vec![text("gen_ai.operation.name", "chat")],
    );
    no_end.end_time_unix_nano = 0;
    let mut short_id = span(
        12,
        1202,
        None,
        "chat b",
        0,
        5,
        vec![text("gen_ai.operation.name", "chat")],
    );
    short_id.span_id.truncate(4);
    let backwards = span(
        12,
        1203,
        None,
        "chat c",
        9,
        5,
        vec![text("gen_ai.operation.name", "chat")],
    );
    let mut odd = span(
        12,
        1204,
        None,
        "chat d",
        0,
        5,
        vec![
            text("gen_ai.operation.name", "chat"),
            int("gen_ai.usage.input_tokens", -3),
            attr("gen_ai.usage.output_tokens", Any::DoubleValue(1e300)),
            int("gen_ai.request.model", 5),
        ],
    );
    odd.kind = 99;
    odd.status = Some(Status {
        code: 17,
        message: String::new(),
    });
    let body = serde_json::to_vec(&request("svc", vec![no_end, short_id, backwards, odd])).unwrap();
    let (status, answer) = post_traces(&addr, "application/json", None, &body);
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedSpans"], "3",
        "int64 as a string in OTLP JSON: {answer}"
    );
    let message = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
    for reason in [
        "no start or no end time",
        "span id is not 8 bytes",
        "ends before it starts",
    ] {
        assert!(message.contains(reason), "`{reason}` not in {message}");
    }
    let events = logged(&log);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0]["payload"].get("usage"),
        None,
        "invalid token counts are left out"
    );
    assert_eq!(
        events[0]["payload"].get("model"),
        None,
        "a model that is not a string is left out"
    );
    assert_eq!(events[0]["payload"]["otel"]["kind"], "unspecified");
    let (_, metrics) = support::http(&addr, "GET", "/metrics", b"");
    assert!(metrics.contains("plugbus_otlp_invalid_attributes_total 3"), "{metrics}");
    assert!(
        metrics.contains("plugbus_otlp_requests_total{outcome=\"failed\"} 11"),
        "{metrics}"
    );

    // As many spans as a request may hold: all taken.
    let many: Vec<Span> = (0..plugbus::otlp::MAX_SPANS as u64)
        .map(|i| {
            span(
                13,
                10_000 + i,
                None,
                "chat m",
                i,
                i + 1,
                vec![
                    text("gen_ai.operation.name", "chat"),
                    int("gen_ai.usage.input_tokens", 1),
                ],
            )
        })
        .collect();
    let (status, answer) = post_traces(
        &addr,
        "application/x-protobuf",
        Some("gzip"),
        &gzip(&request("svc", many).encode_to_vec()),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(logged(&log).len(), plugbus::otlp::MAX_SPANS + 1);
    support::terminate(&served);
}

fn refused_as_too_large(result: Result<plugbus::otlp::Export, plugbus::otlp::OtlpError>, reason: &str) {
    match result {
        Err(e) => {
            assert_eq!(e.status(), 413, "{e}");
            assert!(e.to_string().contains(reason), "`{reason}` not in {e}");
        }
        Ok(export) => panic!("taken ({} events), not refused for `{reason}`", export.published),
    }
}

/// Requests that weigh little but would decode, or map, into far more are
/// refused (413) before they are: eight million empty spans fit in 16 MiB
/// (2.7 GB once decoded, measured before the count), one span can carry
/// half a million empty attributes, and a 100 KiB `service.name` is copied
/// into each of 700 spans' events. And a request's events fit in half the
/// window of recent ids, so its retry is stored once: before, a request of
/// 17,001 tool spans (34,002 events) was stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_would_decode_or_map_into_far_more_than_they_weigh_are_refused() {
    let bus = plugbus::Bus::builder().build().await.unwrap();
    let receiver = Receiver::new(MapOptions::default());
    let export = |body: Vec<u8>, encoding: Encoding, content_encoding: Option<&'static str>| {
        let (bus, receiver) = (&bus, &receiver);
        async move { receiver.export(bus, &body, encoding, content_encoding).await }
    };
    let empty_spans = request("svc", vec![Span::default(); 20_000]).encode_to_vec();
    refused_as_too_large(
        export(gzip(&empty_spans), Encoding::Protobuf, Some("gzip")).await,
        "spans in one request",
    );
    let mut wide = span(20, 1, None, "chat", 0, 1, vec![text("gen_ai.operation.name", "chat")]);
    wide.attributes
        .extend(std::iter::repeat_n(KeyValue::default(), 600_000));
    refused_as_too_large(
        export(
            request("svc", vec![wide.clone()]).encode_to_vec(),
            Encoding::Protobuf,
            None,
        )
        .await,
        "elements",
    );
    refused_as_too_large(
        export(
            serde_json::to_vec(&request("svc", vec![wide])).unwrap(),
            Encoding::Json,
            None,
        )
        .await,
        "elements",
    );
    let copied: Vec<Span> = (0..700)
        .map(|i| {
            span(
                21,
                100 + i,
                None,
                "chat",
                i,
                i + 1,
                vec![text("gen_ai.operation.name", "chat")],
            )
        })
        .collect();
    refused_as_too_large(
        export(
            request(&"s".repeat(100 << 10), copied).encode_to_vec(),
            Encoding::Protobuf,
            None,
        )
        .await,
        "map to more than",
    );
    // A zlib bomb is too large, not "corrupt": 70 MiB of spaces.
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    zlib.write_all(&vec![b' '; 70 << 20]).unwrap();
    refused_as_too_large(
        export(zlib.finish().unwrap(), Encoding::Json, Some("deflate")).await,
        "inflates past",
    );
    assert_eq!(bus.published(), 0, "nothing of a refused request is published");

    let tools = |n: u64| -> Vec<Span> {
        (0..n)
            .map(|i| {
                span(
                    22,
                    1_000 + i,
                    None,
                    "execute_tool t",
                    i,
                    i + 1,
                    vec![
                        text("gen_ai.operation.name", "execute_tool"),
                        text("gen_ai.tool.name", "t"),
                    ],
                )
            })
            .collect()
    };
    refused_as_too_large(
        export(request("svc", tools(17_001)).encode_to_vec(), Encoding::Protobuf, None).await,
        "spans in one request",
    );
    let full = request("svc", tools(plugbus::otlp::MAX_SPANS as u64)).encode_to_vec();
    let first = export(full.clone(), Encoding::Protobuf, None).await.unwrap();
    assert_eq!(first.published, 2 * plugbus::otlp::MAX_SPANS as u64);
    let retry = export(full, Encoding::Protobuf, None).await.unwrap();
    assert_eq!(
        (retry.published, retry.duplicates),
        (0, 2 * plugbus::otlp::MAX_SPANS as u64),
        "a retry of the largest request is stored once"
    );
    bus.shutdown().await;
}

/// A CloudEvent at `ms` after [`T0`]: a hand-written emit with the time the
/// span would have, so both feeds can be compared field for field.
fn by_hand(ms: u64, name: &str, data: Value) -> plugbus::Event {
    let ns = T0 + ms * MS;
    let secs = (ns / 1_000_000_000) as i64;
    let time = time::OffsetDateTime::from_unix_timestamp(secs).unwrap()
        + time::Duration::nanoseconds((ns % 1_000_000_000) as i64);
    let time = time.format(&time::format_description::well_known::Rfc3339).unwrap();
    plugbus::cloudevents::from_json(&json!({
        "specversion": "1.0", "id": format!("hand-{ms}-{name}"), "source": "/agents/research",
        "type": name, "time": time, "correlationid": "run-21", "data": data,
    }))
    .unwrap()
}

/// The hand-written twin of [`agent_session`]: the emits an agent would
/// write itself, with no cost (cost-tracker prices both from its table).
fn hand_written_session() -> Vec<plugbus::Event> {
    vec![
        by_hand(0, "agent.run_started", json!({"agent": "research-assistant"})),
        by_hand(
            830,
            "model_responded",
            json!({"model": "gpt-4.1-mini-2025-04-14", "usage": {"prompt_tokens": 1850, "completion_tokens": 240}}),
        ),
        by_hand(
            840,
            "tool.called",
            json!({"tool": "web_search", "args": {"query": "wasm sandbox isolation"}}),
        ),
        by_hand(2080, "tool.result", json!({"tool": "web_search", "latency_ms": 1240})),
        by_hand(2100, "tool.called", json!({"tool": "fetch_url"})),
        by_hand(
            2740,
            "tool.result",
            json!({"tool": "fetch_url", "error": "ConnectionError"}),
        ),
        by_hand(
            5850,
            "model_responded",
            json!({"model": "gpt-4.1", "usage": {"prompt_tokens": 6200, "completion_tokens": 910, "cache_read_tokens": 4000}}),
        ),
        by_hand(6000, "agent.run_finished", json!({"agent": "research-assistant"})),
    ]
}

/// agent-runs' answer for run-21 and the costs cost-tracker priced.
async fn runs_and_cost(bus: &plugbus::Bus, priced: &Recorder) -> (Value, Vec<f64>) {
    bus.flush().await;
    let answer: Value = bus
        .query("agent-runs", r#"{"run": "run-21"}"#)
        .await
        .unwrap()
        .parse()
        .unwrap();
    let costs = priced
        .named("cost.priced")
        .iter()
        .map(|e| e.payload()["cost_usd"].as_f64().unwrap())
        .collect();
    (answer, costs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_session_by_hand_and_as_otlp_spans_gives_the_same_runs_and_cost() {
    let open = |dir: &Path| {
        plugbus::Bus::builder()
            .plugin_dir(dir)
            .watch(false)
            .cache_dir(support::shared_cache())
            .build()
    };
    let hand_dir = support::plugin_dir(&["cost-tracker", "agent-runs"]);
    let hand = open(hand_dir.path()).await.unwrap();
    let hand_priced = Recorder::attach(&hand, "cost.priced");
    for event in hand_written_session() {
        hand.publish(event);
    }
    let (hand_run, hand_costs) = runs_and_cost(&hand, &hand_priced).await;

    let otel_dir = support::plugin_dir(&["cost-tracker", "agent-runs"]);
    let otel = open(otel_dir.path()).await.unwrap();
    let otel_priced = Recorder::attach(&otel, "cost.priced");
    let mut spans = agent_session(21);
    // pydantic-ai names the conversation on its spans; here only the agent's.
    spans[4].attributes.push(text("gen_ai.conversation.id", "run-21"));
    let body = request("research-svc", spans).encode_to_vec();
    Receiver::new(MapOptions::default())
        .export(&otel, &body, Encoding::Protobuf, None)
        .await
        .unwrap();
    let (otel_run, otel_costs) = runs_and_cost(&otel, &otel_priced).await;

    assert_eq!(hand_run, otel_run, "agent-runs builds the same run from both feeds");
    assert_eq!(hand_costs, otel_costs, "cost-tracker prices both the same");
    assert_eq!(otel_costs.len(), 2, "both model calls priced from the table");
    let total: f64 = otel_costs.iter().sum();
    assert!(total > 0.0);
    assert!(
        (otel_run["cost_usd"].as_f64().unwrap() - total).abs() < 1e-12,
        "{otel_run}"
    );
    assert_eq!(otel_run["status"], "completed");
    assert_eq!(otel_run["agent"], "research-assistant");
    assert_eq!(otel_run["tools"], json!(["web_search", "fetch_url"]));
    assert_eq!(otel_run["tokens"], 1850 + 240 + 6200 + 910);
    assert_eq!(otel_run["errors"], json!(["ConnectionError"]));
    assert_eq!(otel_run["duration_ms"], 6000);
    hand.shutdown().await;
    otel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_a_retry_sent_to_another_host_is_stored_once() {
    let nats = support::NatsServer::start();
    let plugins = support::plugin_dir(&["console-logger"]);
    let args = [
        "--plugins",
        plugins.path().to_str().unwrap(),
        "--nats",
        nats.url.as_str(),
    ];
    let (a, addr_a, _log_a) = support::serve(&args);
    let (b, addr_b, _log_b) = support::serve(&args);
    let body = request("svc", agent_session(31)).encode_to_vec();
    // The exporter's first attempt reached A; its retry went to B (a load
    // balancer between them), which never saw the ids: the stream drops them.
    for addr in [&addr_a, &addr_b] {
        let (status, answer) = post_traces(addr, "application/x-protobuf", None, &body);
        assert_eq!(status, 200, "{answer}");
    }
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let mut stream = js.get_stream("PLUGBUS").await.unwrap();
    let info = stream.info().await.unwrap();
    let otel_events = 8;
    // Besides the spans' events: hosts announce plugin loads on the stream.
    let (_, plugins_b) = support::http(&addr_b, "GET", "/plugins", b"");
    let status: Value = serde_json::from_str(&plugins_b).unwrap();
    assert_eq!(
        status["nats"]["publish"]["duplicates"], otel_events,
        "{}",
        status["nats"]
    );
    assert!(info.state.messages >= otel_events, "{:?}", info.state);
    let (_, metrics) = support::http(&addr_b, "GET", "/metrics", b"");
    assert!(
        metrics.contains("plugbus_otlp_events_total 8"),
        "B published them: the stream dropped them\n{metrics}"
    );
    support::terminate(&a);
    support::terminate(&b);
}

/// What real exporters send besides the plain forms: a body compressed with
/// `deflate` (zlib, offered by the Python OTLP exporter), a gzip body of
/// several members, OTLP JSON with an empty list attribute written as
/// `{"arrayValue": {}}` (proto3 JSON leaves out an empty repeated field).
/// And a span whose event a schema refuses is refused alone, in the partial
/// success, not with the rest of its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporters_compressions_empty_lists_and_one_refused_span_do_not_cost_the_request() {
    let bus = plugbus::Bus::builder()
        .schema(
            "model_responded",
            json!({"type": "object", "properties": {"model": {"const": "good"}}}),
        )
        .schema_policy(plugbus::SchemaPolicy::Reject)
        .build()
        .await
        .unwrap();
    let seen = Recorder::attach(&bus, "model_responded");
    let receiver = Receiver::new(MapOptions::default());
    let chat = |id: u64, model: &str| {
        span(
            21,
            id,
            None,
            "chat",
            id,
            id + 1,
            vec![
                text("gen_ai.operation.name", "chat"),
                text("gen_ai.request.model", model),
            ],
        )
    };

    // One span refused by its schema, the other stored.
    let body = request("svc", vec![chat(1, "good"), chat(2, "bad")]).encode_to_vec();
    let export = receiver.export(&bus, &body, Encoding::Protobuf, None).await.unwrap();
    assert_eq!((export.mapped, export.published), (1, 1), "{export:?}");
    assert_eq!(export.rejected.len(), 1, "{export:?}");
    assert!(export.rejected[0].reason.contains("schema"), "{:?}", export.rejected);

    // OTLP JSON with an empty list, deflated.
    let mut json_body = serde_json::to_value(request("svc", vec![chat(3, "good")])).unwrap();
    json_body["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "gen_ai.response.finish_reasons", "value": {"arrayValue": {}}}));
    let text_body = serde_json::to_vec(&json_body).unwrap();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&text_body).unwrap();
    let export = receiver
        .export(&bus, &z.finish().unwrap(), Encoding::Json, Some("deflate"))
        .await
        .unwrap();
    assert_eq!((export.published, export.rejected.len()), (1, 0), "{export:?}");

    // One request's bytes gzipped as two members (`cat a.gz b.gz`).
    let whole = request("svc", vec![chat(4, "good")]).encode_to_vec();
    let (a, b) = whole.split_at(whole.len() / 2);
    let two_members = [gzip(a), gzip(b)].concat();
    let export = receiver
        .export(&bus, &two_members, Encoding::Protobuf, Some("gzip"))
        .await
        .unwrap();
    assert_eq!(export.published, 1, "{export:?}");

    bus.flush().await;
    let models: Vec<Value> = seen.events().iter().map(|e| e.payload()["model"].clone()).collect();
    assert_eq!(models, [json!("good"), json!("good"), json!("good")]);
    bus.shutdown().await;
}
