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
use serde_json::{Map, Value, json};

use crate::event::Event;
use crate::otlp::attributes::{Attributes, Invalid};

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
}

/// Lowercase hex, as OTLP JSON writes ids.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

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

fn put(map: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value.into());
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
            s.attrs.str("gen_ai.conversation.id"),
        ) {
            conversations.entry(trace).or_insert(conversation);
        }
    }
    for (trace, conversation) in &conversations {
        memo.remember(*trace, conversation);
    }

    let mut timed: Vec<(u64, usize, Event)> = Vec::with_capacity(spans.len());
    for (i, s) in spans.iter().enumerate() {
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
        let mut agent = check.ok(s.attrs.str("gen_ai.agent.name"));
        let mut agent_id = check.ok(s.attrs.str("gen_ai.agent.id"));
        if agent.is_none() {
            let mut parent = &span.parent_span_id;
            for _ in 0..MAX_ANCESTORS {
                let Some(&p) = by_id.get(&parent[..]).filter(|_| !parent.is_empty()) else {
                    break;
                };
                let up = &spans[p];
                if up.operation == Operation::Agent
                    && let Ok(Some(name)) = up.attrs.str("gen_ai.agent.name")
                {
                    agent = Some(name);
                    agent_id = agent_id.or(up.attrs.str("gen_ai.agent.id").ok().flatten());
                    break;
                }
                parent = &up.span.parent_span_id;
            }
        }
        let own_conversation = check.ok(s.attrs.str("gen_ai.conversation.id"));
        let trace_hex = hex(&trace);
        let correlation = own_conversation
            .or_else(|| conversations.get(&trace).copied())
            .or_else(|| memo.get(&trace))
            .map_or_else(|| trace_hex.clone(), str::to_owned);

        let status_code = span.status.as_ref().map_or(0, |st| st.code);
        let status_message = span.status.as_ref().map_or("", |st| st.message.as_str());
        let error_type = check.ok(s.attrs.str("error.type"));
        let error: Option<String> = (status_code == 2 || error_type.is_some()).then(|| {
            error_type
                .map(str::to_owned)
                .or_else(|| (!status_message.is_empty()).then(|| status_message.to_owned()))
                .unwrap_or_else(|| "error".to_owned())
        });

        let mut otel = Map::new();
        otel.insert("trace_id".into(), Value::String(trace_hex.clone()));
        let span_hex = hex(&span.span_id);
        otel.insert("span_id".into(), Value::String(span_hex.clone()));
        if !span.parent_span_id.is_empty() {
            otel.insert("parent_span_id".into(), Value::String(hex(&span.parent_span_id)));
        }
        otel.insert("name".into(), Value::String(span.name.clone()));
        otel.insert("kind".into(), Value::String(kind_name(span.kind).into()));
        otel.insert("start_unix_nano".into(), json!(span.start_time_unix_nano));
        otel.insert("end_unix_nano".into(), json!(span.end_time_unix_nano));
        let status = match status_code {
            1 => "ok",
            2 => "error",
            _ => "unset",
        };
        otel.insert("status".into(), Value::String(status.into()));
        if !status_message.is_empty() {
            otel.insert("status_message".into(), Value::String(status_message.into()));
        }
        put(&mut otel, "service", s.service);
        if !s.scope.is_empty() {
            otel.insert("scope".into(), Value::String(s.scope.into()));
        }
        let otel = Value::Object(otel);

        let source = s.service.unwrap_or("otlp");
        let end_id = format!("otel-{trace_hex}-{span_hex}");
        let duration = millis(span.end_time_unix_nano - span.start_time_unix_nano);
        let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
        let mut push = |phase: u64, time: u64, name: &str, id: String, payload: Map<String, Value>| {
            let event = Event::external(
                name,
                &id,
                source,
                Some(time),
                Some(correlation.clone()),
                Value::Object(payload),
            );
            timed.push((time, i * 2 + phase as usize, event));
        };

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
                let mut p = Map::new();
                put(&mut p, "model", response_model.or(request_model));
                put(&mut p, "request_model", request_model);
                put(&mut p, "provider", provider);
                put(&mut p, "operation", s.operation_name);
                let mut usage = Map::new();
                put(&mut usage, "prompt_tokens", input);
                put(&mut usage, "completion_tokens", output);
                put(&mut usage, "cache_read_tokens", cache_read);
                put(&mut usage, "cache_creation_tokens", cache_creation);
                if !usage.is_empty() {
                    p.insert("usage".into(), Value::Object(usage));
                }
                p.insert("latency_ms".into(), json!(duration));
                put(&mut p, "finish_reasons", finish);
                put(&mut p, "agent", agent);
                put(&mut p, "agent_id", agent_id);
                put(&mut p, "conversation_id", own_conversation);
                put(&mut p, "error", error.clone());
                put(&mut p, "input_messages", s.attrs.content("gen_ai.input.messages"));
                put(&mut p, "output_messages", s.attrs.content("gen_ai.output.messages"));
                put(
                    &mut p,
                    "system_instructions",
                    s.attrs.content("gen_ai.system_instructions"),
                );
                p.insert("otel".into(), otel);
                push(1, end, "model_responded", end_id, p);
            }
            Operation::Tool => {
                let tool = check.ok(s.attrs.str("gen_ai.tool.name"));
                let call_id = check.ok(s.attrs.str("gen_ai.tool.call.id"));
                let tool_type = check.ok(s.attrs.str("gen_ai.tool.type"));
                let mut called = Map::new();
                put(&mut called, "tool", tool);
                put(&mut called, "call_id", call_id);
                put(&mut called, "tool_type", tool_type);
                put(&mut called, "args", s.attrs.content("gen_ai.tool.call.arguments"));
                put(&mut called, "agent", agent);
                called.insert("otel".into(), otel.clone());
                push(0, start, "tool.called", format!("{end_id}-start"), called);
                let mut result = Map::new();
                put(&mut result, "tool", tool);
                put(&mut result, "call_id", call_id);
                put(&mut result, "tool_type", tool_type);
                result.insert("latency_ms".into(), json!(duration));
                put(&mut result, "result", s.attrs.content("gen_ai.tool.call.result"));
                put(&mut result, "error", error.clone());
                put(&mut result, "agent", agent);
                result.insert("otel".into(), otel);
                push(1, end, "tool.result", end_id, result);
            }
            Operation::Agent => {
                let model = check.ok(s.attrs.str("gen_ai.request.model"));
                let mut started = Map::new();
                put(&mut started, "agent", agent);
                put(&mut started, "agent_id", agent_id);
                put(&mut started, "model", model);
                started.insert("otel".into(), otel.clone());
                push(0, start, "agent.run_started", format!("{end_id}-start"), started);
                let mut finished = Map::new();
                put(&mut finished, "agent", agent);
                put(&mut finished, "agent_id", agent_id);
                let name = match &error {
                    Some(error) => {
                        finished.insert("error".into(), Value::String(error.clone()));
                        "agent.failed"
                    }
                    None => {
                        finished.insert("status".into(), Value::String("completed".into()));
                        "agent.run_finished"
                    }
                };
                finished.insert("duration_ms".into(), json!(duration));
                let input = check.ok(s.attrs.tokens("gen_ai.usage.input_tokens"));
                let output = check.ok(s.attrs.tokens("gen_ai.usage.output_tokens"));
                let mut usage = Map::new();
                put(&mut usage, "prompt_tokens", input);
                put(&mut usage, "completion_tokens", output);
                if !usage.is_empty() {
                    finished.insert("usage".into(), Value::Object(usage));
                }
                finished.insert("otel".into(), otel);
                push(1, end, name, end_id, finished);
            }
            Operation::CreateAgent => {
                let model = check.ok(s.attrs.str("gen_ai.request.model"));
                let mut created = Map::new();
                put(&mut created, "agent", agent);
                put(&mut created, "agent_id", agent_id);
                put(&mut created, "model", model);
                put(&mut created, "error", error.clone());
                created.insert("otel".into(), otel);
                push(1, end, "agent.created", end_id, created);
            }
            Operation::Other => {
                let mut p = Map::new();
                p.insert("name".into(), Value::String(span.name.clone()));
                p.insert("kind".into(), Value::String(kind_name(span.kind).into()));
                p.insert("duration_ms".into(), json!(duration));
                p.insert("attributes".into(), Value::Object(s.attrs.to_object()));
                put(&mut p, "error", error.clone());
                p.insert("otel".into(), otel);
                push(1, end, "otel.span", end_id, p);
            }
        }
    }
    timed.sort_by_key(|(time, ordinal, _)| (*time, *ordinal));
    mapping.events = timed.into_iter().map(|(_, _, e)| e).collect();
    mapping
}
