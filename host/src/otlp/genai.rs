//! The GenAI mapping: OpenTelemetry spans following the GenAI semantic
//! conventions become the events plugbus's plugins understand
//! (`model_responded`, `tool.called`, `tool.result`, `agent.*`). The table
//! is in docs/opentelemetry.md; this module is its one implementation.
//!
//! Followed: the GenAI conventions of semantic-conventions 1.37 and the
//! `semantic-conventions-genai` schema 1.42 (the current attribute names),
//! and, for producers still on 1.36 or earlier, the older names
//! `gen_ai.system`, `gen_ai.usage.prompt_tokens` and
//! `gen_ai.usage.completion_tokens`.

use std::collections::{HashMap, VecDeque};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;

use crate::event::{Event, MAX_CORRELATION_ID_BYTES};
use crate::otlp::attributes::{Attributes, Invalid};
use crate::otlp::payload::JsonObject;

/// The semantic-conventions version whose GenAI attribute names this
/// mapping reads (the older names listed in the module doc are read too).
pub const SEMCONV_VERSION: &str = "1.37.0";

/// How far up a span's parents the mapping looks for its agent: agent
/// frameworks nest a few levels (agent → chat → tool), never dozens; the
/// bound keeps a cyclic or hostile parent chain from looping.
const MAX_ANCESTORS: usize = 64;

/// Traces whose conversation id is remembered across requests: an agent
/// run's spans reach the receiver in several export batches, and only some
/// spans carry `gen_ai.conversation.id`. 4,096 runs in flight at once is
/// far more than one host sees; older traces fall back to their trace id.
pub const REMEMBERED_TRACES: usize = 4_096;

/// Invalid-attribute messages kept per request (the count is exact).
const MAX_MESSAGES: usize = 8;

/// The attribute naming a conversation: the run's correlation id.
const CONVERSATION: &str = "gen_ai.conversation.id";

/// What the mapping does with spans that are not GenAI spans it knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapOptions {
    /// Pass every other span through as an `otel.span` event instead of
    /// dropping it (`--otlp-all`).
    pub all_spans: bool,
}

/// Conversation ids of recent traces (bounded, oldest forgotten first).
#[derive(Default)]
pub struct TraceMemo {
    by_trace: HashMap<[u8; 16], String>,
    order: VecDeque<[u8; 16]>,
}

impl TraceMemo {
    fn get(&self, trace: &[u8; 16]) -> Option<&str> {
        self.by_trace.get(trace).map(String::as_str)
    }

    fn remember(&mut self, trace: [u8; 16], conversation: &str) {
        if self.by_trace.contains_key(&trace) {
            return;
        }
        if self.order.len() == REMEMBERED_TRACES
            && let Some(old) = self.order.pop_front()
        {
            self.by_trace.remove(&old);
        }
        self.by_trace.insert(trace, conversation.to_owned());
        self.order.push_back(trace);
    }
}

/// A span the mapping refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The span's name.
    pub span: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The events one request maps to, and what became of its spans.
#[derive(Debug, Default)]
pub struct Mapping {
    /// The events, in time order (see docs/opentelemetry.md).
    pub events: Vec<Event>,
    /// Spans in the request.
    pub spans: u64,
    /// Spans that became events.
    pub mapped: u64,
    /// Spans that are not GenAI spans (dropped without `all_spans`).
    pub dropped: u64,
    /// Spans refused (no ids, no end time, …): the OTLP partial success.
    pub rejected: Vec<Rejected>,
    /// Attributes present with a wrong type or out of range (left out of
    /// the payload; the span is still mapped).
    pub invalid_attributes: u64,
    /// The first few of those, for the log.
    pub invalid_messages: Vec<String>,
    /// The events would hold more than [`MAX_MAPPED`](crate::otlp::MAX_MAPPED)
    /// bytes: mapping stopped there (the request is refused, 413).
    pub too_large: bool,
}

/// The GenAI operation of a span, as the mapping treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    /// `chat`, `text_completion`, `generate_content`, `embeddings`.
    Model,
    /// `execute_tool`.
    Tool,
    /// `invoke_agent`.
    Agent,
    /// `create_agent`.
    CreateAgent,
    /// Anything else (not a GenAI span, or an operation not mapped).
    Other,
}

impl Operation {
    fn of(name: Option<&str>) -> Operation {
        match name {
            Some("chat" | "text_completion" | "generate_content" | "embeddings") => Operation::Model,
            Some("execute_tool") => Operation::Tool,
            Some("invoke_agent") => Operation::Agent,
            Some("create_agent") => Operation::CreateAgent,
            _ => Operation::Other,
        }
    }
}

/// One span with where it came from.
struct SpanAt<'a> {
    span: &'a Span,
    attrs: Attributes<'a>,
    service: Option<&'a str>,
    scope: &'a str,
    operation: Operation,
    operation_name: Option<&'a str>,
    /// `gen_ai.agent.name` and `.id` when valid, looked up once: the
    /// agent of every descendant without one of its own (a lookup per
    /// descendant scanned the ancestor's attributes each time).
    agent: Option<&'a str>,
    agent_id: Option<&'a str>,
}

/// Lowercase hex, as OTLP JSON writes ids.
pub use crate::text::hex;

fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// Milliseconds with microsecond precision.
fn millis(nanos: u64) -> f64 {
    (nanos / 1_000) as f64 / 1_000.0
}

/// Collects invalid attributes without failing the span.
struct Checker<'m> {
    mapping: &'m mut Mapping,
    span: &'m str,
}

impl Checker<'_> {
    fn ok<T>(&mut self, result: Result<Option<T>, Invalid>) -> Option<T> {
        match result {
            Ok(v) => v,
            Err(invalid) => {
                self.mapping.invalid_attributes += 1;
                if self.mapping.invalid_messages.len() < MAX_MESSAGES {
                    self.mapping.invalid_messages.push(format!(
                        "span `{}`: attribute `{}`: {}",
                        self.span, invalid.key, invalid.reason
                    ));
                }
                None
            }
        }
    }
}

/// Maps every span of `request` (see the module doc and
/// docs/opentelemetry.md). Never fails: a span that cannot be mapped is
/// listed in [`Mapping::rejected`], a bad attribute is left out and counted.
pub fn map_request(request: &ExportTraceServiceRequest, options: MapOptions, memo: &mut TraceMemo) -> Mapping {
    let mut mapping = Mapping::default();
    let mut spans: Vec<SpanAt<'_>> = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let service = Attributes(resource).str("service.name").ok().flatten();
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref().map_or("", |s| s.name.as_str());
            for span in &scope_spans.spans {
                let attrs = Attributes(&span.attributes);
                let mut check = Checker {
                    mapping: &mut mapping,
                    span: &span.name,
                };
                let operation_name = check.ok(attrs.str("gen_ai.operation.name"));
                spans.push(SpanAt {
                    span,
                    attrs,
                    service,
                    scope,
                    operation: Operation::of(operation_name),
                    operation_name,
                    agent: attrs.name("gen_ai.agent.name").ok().flatten(),
                    agent_id: attrs.name("gen_ai.agent.id").ok().flatten(),
                });
            }
        }
    }
    mapping.spans = spans.len() as u64;

    // Spans by id (for agent inheritance), and a conversation id per trace.
    let mut by_id: HashMap<&[u8], usize> = HashMap::with_capacity(spans.len());
    let mut conversations: HashMap<[u8; 16], &str> = HashMap::new();
    for (i, s) in spans.iter().enumerate() {
        by_id.insert(&s.span.span_id, i);
        if let (Ok(trace), Ok(Some(conversation))) = (
            <[u8; 16]>::try_from(&s.span.trace_id[..]),
            s.attrs.id(CONVERSATION, MAX_CORRELATION_ID_BYTES),
        ) {
            conversations.entry(trace).or_insert(conversation);
        }
    }
    for (trace, conversation) in &conversations {
        memo.remember(*trace, conversation);
    }

    let mut timed: Vec<(u64, usize, Event)> = Vec::with_capacity(spans.len());
    // Bytes of events made so far (see `Mapping::too_large`).
    let mut made = 0usize;
    for (i, s) in spans.iter().enumerate() {
        if made > crate::otlp::MAX_MAPPED {
            mapping.too_large = true;
            break;
        }
        let span = s.span;
        let reject = |reason: &str| Rejected {
            span: span.name.clone(),
            reason: reason.to_owned(),
        };
        let Ok(trace) = <[u8; 16]>::try_from(&span.trace_id[..]) else {
            mapping.rejected.push(reject("its trace id is not 16 bytes"));
            continue;
        };
        if trace == [0; 16] {
            mapping.rejected.push(reject("its trace id is all zeros"));
            continue;
        }
        if span.span_id.len() != 8 || span.span_id.iter().all(|b| *b == 0) {
            mapping
                .rejected
                .push(reject("its span id is not 8 bytes, or all zeros"));
            continue;
        }
        if span.start_time_unix_nano == 0 || span.end_time_unix_nano == 0 {
            mapping.rejected.push(reject("it has no start or no end time"));
            continue;
        }
        if span.end_time_unix_nano < span.start_time_unix_nano {
            mapping.rejected.push(reject("it ends before it starts"));
            continue;
        }
        if s.operation == Operation::Other && !options.all_spans {
            mapping.dropped += 1;
            continue;
        }
        mapping.mapped += 1;

        // The agent: the span's own, else the nearest invoke_agent ancestor's.
        let mut check = Checker {
            mapping: &mut mapping,
            span: &span.name,
        };
        let mut agent = check.ok(s.attrs.name("gen_ai.agent.name"));
        let mut agent_id = check.ok(s.attrs.name("gen_ai.agent.id"));
        if agent.is_none() {
            let mut parent = &span.parent_span_id;
            for _ in 0..MAX_ANCESTORS {
                let Some(&p) = by_id.get(&parent[..]).filter(|_| !parent.is_empty()) else {
                    break;
                };
                let up = &spans[p];
                if up.operation == Operation::Agent
                    && let Some(name) = up.agent
                {
                    agent = Some(name);
                    agent_id = agent_id.or(up.agent_id);
                    break;
                }
                parent = &up.span.parent_span_id;
            }
        }
        // One too long (or with a line break) to be a correlation id is a
        // counted invalid attribute: the trace id names the run instead.
        let own_conversation = check.ok(s.attrs.id(CONVERSATION, MAX_CORRELATION_ID_BYTES));
        let trace_hex = hex(&trace);
        let correlation = own_conversation
            .or_else(|| conversations.get(&trace).copied())
            .or_else(|| memo.get(&trace))
            .map_or_else(|| trace_hex.clone(), str::to_owned);

        let status_code = span.status.as_ref().map_or(0, |st| st.code);
        let status_message = span.status.as_ref().map_or("", |st| st.message.as_str());
        let error_type = check.ok(s.attrs.str("error.type"));
        let error: Option<&str> = (status_code == 2 || error_type.is_some()).then(|| {
            error_type
                .or((!status_message.is_empty()).then_some(status_message))
                .unwrap_or("error")
        });

        let span_hex = hex(&span.span_id);
        let status = match status_code {
            1 => "ok",
            2 => "error",
            _ => "unset",
        };
        // Keys in ascending order (see `payload`).
        let otel = {
            let mut o = JsonObject::new();
            o.u64("end_unix_nano", span.end_time_unix_nano);
            o.str("kind", kind_name(span.kind));
            o.str("name", &span.name);
            if !span.parent_span_id.is_empty() {
                o.str("parent_span_id", &hex(&span.parent_span_id));
            }
            if !s.scope.is_empty() {
                o.str("scope", s.scope);
            }
            o.opt_str("service", s.service);
            o.str("span_id", &span_hex);
            o.u64("start_unix_nano", span.start_time_unix_nano);
            o.str("status", status);
            if !status_message.is_empty() {
                o.str("status_message", status_message);
            }
            o.str("trace_id", &trace_hex);
            o.finish()
        };

        let source = s.service.unwrap_or("otlp");
        let end_id = format!("otel-{trace_hex}-{span_hex}");
        let duration = millis(span.end_time_unix_nano - span.start_time_unix_nano);
        let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
        let mut push = |phase: u64, time: u64, name: &str, id: String, payload: JsonObject| {
            let payload = payload.finish();
            made += payload.len() + id.len() + source.len() + correlation.len();
            let event = Event::decoded(
                0,
                name.to_owned(),
                id,
                time,
                Some(correlation.clone()),
                source.to_owned(),
                0,
                payload,
            );
            timed.push((time, i * 2 + phase as usize, event));
        };

        // Every payload below writes its keys in ascending order.
        match s.operation {
            Operation::Model => {
                let request_model = check.ok(s.attrs.str("gen_ai.request.model"));
                let response_model = check.ok(s.attrs.str("gen_ai.response.model"));
                let provider = check
                    .ok(s.attrs.str("gen_ai.provider.name"))
                    .or_else(|| check.ok(s.attrs.str("gen_ai.system")));
                let input = check.ok(s.attrs.tokens("gen_ai.usage.input_tokens"));
                let input = input.or_else(|| check.ok(s.attrs.tokens("gen_ai.usage.prompt_tokens")));
                let output = check.ok(s.attrs.tokens("gen_ai.usage.output_tokens"));
                let output = output.or_else(|| check.ok(s.attrs.tokens("gen_ai.usage.completion_tokens")));
                let cache_read = check.ok(s.attrs.tokens("gen_ai.usage.cache_read.input_tokens"));
                let cache_creation = check.ok(s.attrs.tokens("gen_ai.usage.cache_creation.input_tokens"));
                let finish = check.ok(s.attrs.strings("gen_ai.response.finish_reasons"));
                let mut p = JsonObject::new();
                p.opt_str("agent", agent);
                p.opt_str("agent_id", agent_id);
                p.opt_str("conversation_id", own_conversation);
                p.opt_str("error", error);
                p.opt_strings("finish_reasons", finish.as_deref());
                p.opt_value("input_messages", s.attrs.content("gen_ai.input.messages").as_ref());
                p.f64("latency_ms", duration);
                p.opt_str("model", response_model.or(request_model));
                p.opt_str("operation", s.operation_name);
                p.raw("otel", &otel);
                p.opt_value("output_messages", s.attrs.content("gen_ai.output.messages").as_ref());
                p.opt_str("provider", provider);
                p.opt_str("request_model", request_model);
                p.opt_value(
                    "system_instructions",
                    s.attrs.content("gen_ai.system_instructions").as_ref(),
                );
                p.object_if_any("usage", |u| {
                    u.opt_u64("cache_creation_tokens", cache_creation);
                    u.opt_u64("cache_read_tokens", cache_read);
                    u.opt_u64("completion_tokens", output);
                    u.opt_u64("prompt_tokens", input);
                });
                push(1, end, "model_responded", end_id, p);
            }
            Operation::Tool => {
                let tool = check.ok(s.attrs.str("gen_ai.tool.name"));
                let call_id = check.ok(s.attrs.str("gen_ai.tool.call.id"));
                let tool_type = check.ok(s.attrs.str("gen_ai.tool.type"));
                let mut called = JsonObject::new();
                called.opt_str("agent", agent);
                called.opt_value("args", s.attrs.content("gen_ai.tool.call.arguments").as_ref());
                called.opt_str("call_id", call_id);
                called.raw("otel", &otel);
                called.opt_str("tool", tool);
                called.opt_str("tool_type", tool_type);
                push(0, start, "tool.called", format!("{end_id}-start"), called);
                let mut result = JsonObject::new();
                result.opt_str("agent", agent);
                result.opt_str("call_id", call_id);
                result.opt_str("error", error);
                result.f64("latency_ms", duration);
                result.raw("otel", &otel);
                result.opt_value("result", s.attrs.content("gen_ai.tool.call.result").as_ref());
                result.opt_str("tool", tool);
                result.opt_str("tool_type", tool_type);
                push(1, end, "tool.result", end_id, result);
            }
            Operation::Agent => {
                let model = check.ok(s.attrs.str("gen_ai.request.model"));
                let mut started = JsonObject::new();
                started.opt_str("agent", agent);
                started.opt_str("agent_id", agent_id);
                started.opt_str("model", model);
                started.raw("otel", &otel);
                push(0, start, "agent.run_started", format!("{end_id}-start"), started);
                let input = check.ok(s.attrs.tokens("gen_ai.usage.input_tokens"));
                let output = check.ok(s.attrs.tokens("gen_ai.usage.output_tokens"));
                let mut finished = JsonObject::new();
                finished.opt_str("agent", agent);
                finished.opt_str("agent_id", agent_id);
                finished.f64("duration_ms", duration);
                finished.opt_str("error", error);
                finished.raw("otel", &otel);
                if error.is_none() {
                    finished.str("status", "completed");
                }
                finished.object_if_any("usage", |u| {
                    u.opt_u64("completion_tokens", output);
                    u.opt_u64("prompt_tokens", input);
                });
                let name = if error.is_some() {
                    "agent.failed"
                } else {
                    "agent.run_finished"
                };
                push(1, end, name, end_id, finished);
            }
            Operation::CreateAgent => {
                let model = check.ok(s.attrs.str("gen_ai.request.model"));
                let mut created = JsonObject::new();
                created.opt_str("agent", agent);
                created.opt_str("agent_id", agent_id);
                created.opt_str("error", error);
                created.opt_str("model", model);
                created.raw("otel", &otel);
                push(1, end, "agent.created", end_id, created);
            }
            Operation::Other => {
                let mut p = JsonObject::new();
                p.opt_value("attributes", Some(&Value::Object(s.attrs.to_object())));
                p.f64("duration_ms", duration);
                p.opt_str("error", error);
                p.str("kind", kind_name(span.kind));
                p.str("name", &span.name);
                p.raw("otel", &otel);
                push(1, end, "otel.span", end_id, p);
            }
        }
    }
    timed.sort_by_key(|(time, ordinal, _)| (*time, *ordinal));
    mapping.events = timed.into_iter().map(|(_, _, e)| e).collect();
    mapping
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value as Any};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};
    use serde_json::json;

    use super::*;
    use crate::otlp::attributes::tests::kv;

    fn text(key: &str, value: &str) -> KeyValue {
        kv(key, Any::StringValue(value.into()))
    }

    fn span(id: u8, parent: Option<u8>, name: &str, status: Option<(i32, &str)>, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![0, 0, 0, 0, 0, 0, 0, id],
            parent_span_id: parent.map(|p| vec![0, 0, 0, 0, 0, 0, 0, p]).unwrap_or_default(),
            name: name.into(),
            kind: 3,
            start_time_unix_nano: 1_000_000_000 + u64::from(id) * 10_000_000,
            end_time_unix_nano: 1_000_000_000 + u64::from(id) * 10_000_000 + 2_500_000,
            attributes,
            status: status.map(|(code, message)| Status {
                code,
                message: message.into(),
            }),
            ..Default::default()
        }
    }

    /// pydantic-ai sends `gen_ai.conversation.id = ""` when there is none:
    /// two unrelated runs must not become one run correlated by `""`.
    #[test]
    fn an_empty_conversation_id_or_agent_name_counts_as_absent() {
        let run = |trace: u8| {
            let mut s = span(
                1,
                None,
                "invoke_agent",
                None,
                vec![
                    text("gen_ai.operation.name", "invoke_agent"),
                    text("gen_ai.conversation.id", ""),
                    text("gen_ai.agent.name", ""),
                ],
            );
            s.trace_id = vec![trace; 16];
            s
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![run(1), run(2)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mapping = map_request(&request, MapOptions::default(), &mut TraceMemo::default());
        let mut correlations: Vec<Option<&str>> = mapping.events.iter().map(Event::correlation_id).collect();
        correlations.sort();
        let (one, two) = ("01".repeat(16), "02".repeat(16));
        assert_eq!(
            correlations,
            [Some(&*one), Some(&*one), Some(&*two), Some(&*two)],
            "each run is its own trace"
        );
        for event in &mapping.events {
            assert!(event.payload().get("conversation_id").is_none(), "{}", event.payload());
            assert_ne!(event.payload().get("agent"), Some(&json!("")), "{}", event.payload());
        }
    }

    /// A conversation id no correlation id could be (over 256 bytes, or with
    /// a line break) is a counted invalid attribute, and the trace id names
    /// the run: before, a 5,000-byte id became every event's correlation id,
    /// which `POST /events` and CloudEvents refuse.
    #[test]
    fn a_conversation_id_unfit_for_a_correlation_id_gives_way_to_the_trace_id() {
        let run = |trace: u8, conversation: &str| {
            let mut s = span(
                1,
                None,
                "invoke_agent",
                None,
                vec![
                    text("gen_ai.operation.name", "invoke_agent"),
                    text("gen_ai.conversation.id", conversation),
                ],
            );
            s.trace_id = vec![trace; 16];
            s
        };
        let long = "c".repeat(MAX_CORRELATION_ID_BYTES + 1);
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![run(1, &long), run(2, "a\nb"), run(3, "conv-3")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mapping = map_request(&request, MapOptions::default(), &mut TraceMemo::default());
        let mut correlations: Vec<&str> = mapping.events.iter().filter_map(Event::correlation_id).collect();
        correlations.sort_unstable();
        correlations.dedup();
        let (one, two) = ("01".repeat(16), "02".repeat(16));
        assert_eq!(correlations, [&*one, &*two, "conv-3"]);
        assert_eq!(mapping.invalid_attributes, 2, "{:?}", mapping.invalid_messages);
        assert!(
            mapping
                .invalid_messages
                .iter()
                .any(|m| m.contains("gen_ai.conversation.id") && m.contains("1 to 256 bytes")),
            "{:?}",
            mapping.invalid_messages
        );
    }

    /// Every kind of event the mapping writes, with every optional field
    /// present somewhere: each payload's text is exactly the compact,
    /// key-sorted serialisation of its value (what the mapping wrote when
    /// it built `serde_json` values), and the values are those of the table
    /// in docs/opentelemetry.md.
    #[test]
    fn every_payload_is_the_sorted_compact_text_of_its_value() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", "svc")],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(opentelemetry_proto::tonic::common::v1::InstrumentationScope {
                        name: "scope-a".into(),
                        ..Default::default()
                    }),
                    spans: vec![
                        span(
                            1,
                            None,
                            "invoke_agent a",
                            Some((2, "boom")),
                            vec![
                                text("gen_ai.operation.name", "invoke_agent"),
                                text("gen_ai.agent.name", "a"),
                                text("gen_ai.agent.id", "a-1"),
                                text("gen_ai.request.model", "m"),
                                kv("gen_ai.usage.input_tokens", Any::IntValue(5)),
                            ],
                        ),
                        span(
                            2,
                            Some(1),
                            "chat m",
                            None,
                            vec![
                                text("gen_ai.operation.name", "chat"),
                                text("gen_ai.system", "openai"),
                                text("gen_ai.request.model", "m"),
                                text("gen_ai.conversation.id", "conv \"1\""),
                                kv("gen_ai.usage.prompt_tokens", Any::IntValue(10)),
                                kv("gen_ai.usage.output_tokens", Any::DoubleValue(3.0)),
                                kv("gen_ai.usage.cache_read.input_tokens", Any::IntValue(1)),
                                kv("gen_ai.usage.cache_creation.input_tokens", Any::IntValue(2)),
                                kv(
                                    "gen_ai.response.finish_reasons",
                                    Any::ArrayValue(ArrayValue {
                                        values: vec![AnyValue {
                                            value: Some(Any::StringValue("stop".into())),
                                        }],
                                    }),
                                ),
                                text("gen_ai.input.messages", r#"[{"role": "user", "b": 1, "a": 2}]"#),
                                text("gen_ai.output.messages", "plain text"),
                                text("gen_ai.system_instructions", "be brief"),
                                text("error.type", "timeout"),
                            ],
                        ),
                        span(
                            3,
                            Some(1),
                            "execute_tool t",
                            Some((1, "")),
                            vec![
                                text("gen_ai.operation.name", "execute_tool"),
                                text("gen_ai.tool.name", "t"),
                                text("gen_ai.tool.call.id", "c1"),
                                text("gen_ai.tool.type", "function"),
                                text("gen_ai.tool.call.arguments", r#"{"q": "x"}"#),
                                text("gen_ai.tool.call.result", "42"),
                            ],
                        ),
                        span(
                            4,
                            None,
                            "create_agent b",
                            None,
                            vec![
                                text("gen_ai.operation.name", "create_agent"),
                                text("gen_ai.agent.name", "b"),
                                text("gen_ai.request.model", "m2"),
                            ],
                        ),
                        span(
                            5,
                            None,
                            "GET /",
                            None,
                            vec![text("http.method", "GET"), kv("n", Any::IntValue(1))],
                        ),
                        span(
                            6,
                            None,
                            "invoke_agent c",
                            None,
                            vec![
                                text("gen_ai.operation.name", "invoke_agent"),
                                text("gen_ai.agent.name", "c"),
                            ],
                        ),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let mapping = map_request(&request, MapOptions { all_spans: true }, &mut TraceMemo::default());
        assert_eq!(mapping.mapped, 6);
        let names: Vec<&str> = mapping.events.iter().map(Event::name).collect();
        assert_eq!(
            names,
            [
                "agent.run_started",
                "agent.failed",
                "model_responded",
                "tool.called",
                "tool.result",
                "agent.created",
                "otel.span",
                "agent.run_started",
                "agent.run_finished"
            ]
        );
        for event in &mapping.events {
            assert_eq!(event.payload_json(), event.payload().to_string(), "{}", event.name());
            assert_eq!(event.correlation_id(), Some("conv \"1\""));
            assert_eq!(event.source(), "svc");
        }
        let model = &mapping.events[2];
        assert_eq!(model.id(), format!("otel-{}-0000000000000002", "07".repeat(16)));
        let mut payload = model.payload().clone();
        let otel = payload.as_object_mut().and_then(|p| p.remove("otel")).unwrap();
        assert_eq!(
            payload,
            json!({
                "agent": "a", "agent_id": "a-1", "conversation_id": "conv \"1\"",
                "error": "timeout", "finish_reasons": ["stop"],
                "input_messages": [{"a": 2, "b": 1, "role": "user"}],
                "latency_ms": 2.5, "model": "m", "operation": "chat",
                "output_messages": "plain text", "provider": "openai",
                "request_model": "m", "system_instructions": "be brief",
                "usage": {"cache_creation_tokens": 2, "cache_read_tokens": 1,
                          "completion_tokens": 3, "prompt_tokens": 10},
            })
        );
        assert_eq!(
            otel,
            json!({
                "end_unix_nano": 1_022_500_000u64, "kind": "client", "name": "chat m",
                "parent_span_id": "0000000000000001", "scope": "scope-a", "service": "svc",
                "span_id": "0000000000000002", "start_unix_nano": 1_020_000_000u64,
                "status": "unset", "trace_id": "07".repeat(16),
            })
        );
        let failed = mapping.events[1].payload();
        assert_eq!(failed["error"], "boom");
        assert_eq!(failed["usage"], json!({"prompt_tokens": 5}));
        assert_eq!(failed["otel"]["status_message"], "boom");
        assert!(failed.get("status").is_none());
        assert_eq!(mapping.events[3].payload()["args"], json!({"q": "x"}));
        assert_eq!(mapping.events[4].payload()["result"], "42");
        assert_eq!(mapping.events[4].payload()["otel"]["status"], "ok");
        assert_eq!(mapping.events[5].payload()["model"], "m2");
        assert_eq!(
            mapping.events[6].payload()["attributes"],
            json!({"http.method": "GET", "n": 1})
        );
        let finished = mapping.events[8].payload();
        assert_eq!(finished["status"], "completed");
        assert!(finished.get("usage").is_none());
    }
}
