//! otlp-export: turns the agent events plugbus understands (`model_responded`,
//! `tool.called` / `tool.result`, `agent.run_started` / `agent.run_finished` /
//! `agent.failed`) into OpenTelemetry GenAI spans and sends them to a
//! collector as OTLP/HTTP JSON (`POST /v1/traces`).
//!
//! - **Structure**: one trace per correlation id (the agent run); the run is
//!   an `invoke_agent {agent}` span, and its model calls (`chat {model}`) and
//!   tool calls (`execute_tool {tool}`) are its children. Events that came
//!   from OpenTelemetry (they carry `otel` ids) keep their trace, span and
//!   parent ids, so a trace fed in and exported again is the same trace.
//!   Other ids are derived from the correlation and event ids: the same
//!   events give the same spans on every host and every replay.
//! - **Attributes** (GenAI semantic conventions 1.37): `gen_ai.operation.name`,
//!   `gen_ai.provider.name`, `gen_ai.request.model`, `gen_ai.response.model`,
//!   `gen_ai.usage.input_tokens` / `output_tokens`,
//!   `gen_ai.response.finish_reasons`, `gen_ai.conversation.id`,
//!   `gen_ai.agent.name` / `id`, `gen_ai.tool.name` / `call.id` / `type`,
//!   `error.type`.
//! - **Batching**: spans wait in the plugin's state (snapshotted, so kept
//!   across traps and restarts) until `batch_spans` wait, an event comes
//!   `batch_ms` of event time after the oldest, or an agent run ends.
//!   Decisions use event time, never the wall clock, so a replay decides as
//!   the live run did, and the host's request journal gives it the same
//!   answers without sending again.
//! - **Failures**: 429, 502, 503 and 504 are retried at once, up to three
//!   attempts; then, and on any other failure, the spans stay pending and the
//!   next attempt waits `batch_ms` of event time. At most `max_pending` spans
//!   wait; past that the oldest are dropped and counted: a collector that is
//!   down costs bounded memory and counted drops, never an unbounded queue.
//!   Its query answers `{"pending", "sent", "dropped", "open_runs"}`.

use std::collections::{BTreeMap, VecDeque};

use plugbus_guest::{Event, Plugin, http, info, warn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Attempts per flush when the collector answers 429, 502, 503 or 504.
const ATTEMPTS: u32 = 3;

#[derive(Serialize, Deserialize)]
struct OtlpExport {
    /// Spans waiting to be sent (OTLP JSON text: serialised once, when
    /// made, so a flush only joins them), oldest first, with the event time
    /// each was made at.
    pending: VecDeque<(u64, String)>,
    /// Open agent runs: correlation id → (start time, agent name).
    runs: BTreeMap<String, (u64, String)>,
    /// Open tool calls: (run, call id) → start time.
    tools: BTreeMap<String, u64>,
    /// Event time of the last failed send (the next waits `batch_ms`).
    failed_at: Option<u64>,
    sent: u64,
    dropped: u64,
    #[serde(skip, default = "Settings::read")]
    settings: Settings,
}

struct Settings {
    endpoint: Option<String>,
    service: String,
    batch_spans: usize,
    batch_nanos: u64,
    max_pending: usize,
}

impl Settings {
    fn read() -> Settings {
        let number = |key: &str, default: u64| {
            plugbus_guest::config(key)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        Settings {
            endpoint: plugbus_guest::config("endpoint"),
            service: plugbus_guest::config("service_name").unwrap_or_else(|| "plugbus".into()),
            batch_spans: number("batch_spans", 64).max(1) as usize,
            batch_nanos: number("batch_ms", 5000).saturating_mul(1_000_000),
            max_pending: number("max_pending", 2048).max(1) as usize,
        }
    }
}

impl Default for OtlpExport {
    fn default() -> Self {
        OtlpExport {
            pending: VecDeque::new(),
            runs: BTreeMap::new(),
            tools: BTreeMap::new(),
            failed_at: None,
            sent: 0,
            dropped: 0,
            settings: Settings::read(),
        }
    }
}

/// 64 bits of FNV-1a over `parts`, seeded: ids derived from event data.
fn hash64(seed: u64, parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The key of an open tool call: its run and its call id (a model's
/// tool-call ids, `call_1`…, repeat across concurrent runs).
fn open_call(event: &Event, call: &str) -> String {
    let run = event.correlation_id.as_deref().unwrap_or("");
    format!("{run}\u{1f}{call}")
}

/// A 32-hex trace id for a run (correlation id, else the event's own id).
pub fn trace_id(run: &str) -> String {
    format!("{:016x}{:016x}", hash64(1, &[run]), hash64(2, &[run]))
}

/// A 16-hex span id for `parts`.
pub fn span_id(parts: &[&str]) -> String {
    format!("{:016x}", hash64(3, parts))
}

fn text(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

fn int(key: &str, value: u64) -> Value {
    // OTLP JSON: 64-bit integers as strings.
    json!({ "key": key, "value": { "intValue": value.to_string() } })
}

/// The ids of an event: its `otel` ids when it came from OpenTelemetry,
/// else derived. `(trace id, span id, parent span id)`.
fn ids(event: &Event, payload: &Value, kind: &str) -> (String, String, Option<String>) {
    let otel = &payload["otel"];
    let run = event.correlation_id.clone().unwrap_or_else(|| event.id.clone());
    let trace = otel["trace_id"].as_str().map_or_else(|| trace_id(&run), str::to_owned);
    let derived_parent = event.correlation_id.as_ref().map(|c| span_id(&["agent", c]));
    match otel["span_id"].as_str() {
        Some(span) => (
            trace,
            span.to_owned(),
            otel["parent_span_id"].as_str().map(str::to_owned),
        ),
        None if kind == "agent" => (trace, span_id(&["agent", &run]), None),
        None => (trace, span_id(&[kind, &event.id]), derived_parent),
    }
}

impl OtlpExport {
    fn span(
        &self,
        (trace, span, parent): (String, String, Option<String>),
        name: String,
        (start, end): (u64, u64),
        error: Option<&str>,
        attributes: Vec<Value>,
    ) -> Value {
        let mut s = json!({
            "traceId": trace,
            "spanId": span,
            "name": name,
            "kind": 3, // CLIENT: a call out of the agent (OTel GenAI conventions)
            "startTimeUnixNano": start.to_string(),
            "endTimeUnixNano": end.max(start).to_string(),
            "attributes": attributes,
            "status": match error {
                Some(message) => json!({ "code": 2, "message": message }),
                None => json!({ "code": 1 }),
            },
        });
        if let Some(parent) = parent {
            s["parentSpanId"] = Value::String(parent);
        }
        s
    }

    /// The span an event makes, if any (and the state it opens or closes).
    fn on(&mut self, event: &Event, payload: &Value) -> Option<Value> {
        let end = event.time_unix_nanos;
        let ms = |v: &Value| (v.as_f64().unwrap_or(0.0) * 1e6) as u64;
        let conversation = event.correlation_id.as_deref();
        let mut common = Vec::new();
        if let Some(c) = conversation {
            common.push(text("gen_ai.conversation.id", c));
        }
        if let Some(agent) = payload["agent"].as_str() {
            common.push(text("gen_ai.agent.name", agent));
        }
        let error = payload["error"].as_str().or_else(|| payload["error"]["type"].as_str());
        match event.name.as_str() {
            "model_responded" => {
                let model = payload["model"].as_str().unwrap_or("unknown");
                let operation = payload["operation"].as_str().unwrap_or("chat");
                let mut a = vec![
                    text("gen_ai.operation.name", operation),
                    text("gen_ai.response.model", model),
                ];
                a.push(text(
                    "gen_ai.request.model",
                    payload["request_model"].as_str().unwrap_or(model),
                ));
                if let Some(p) = payload["provider"].as_str() {
                    a.push(text("gen_ai.provider.name", p));
                }
                let usage = &payload["usage"];
                for (key, field) in [
                    ("gen_ai.usage.input_tokens", "prompt_tokens"),
                    ("gen_ai.usage.output_tokens", "completion_tokens"),
                ] {
                    if let Some(n) = usage[field].as_u64() {
                        a.push(int(key, n));
                    }
                }
                if let Some(reasons) = payload["finish_reasons"].as_array() {
                    let values: Vec<Value> = reasons.iter().map(|r| json!({ "stringValue": r })).collect();
                    a.push(json!({ "key": "gen_ai.response.finish_reasons", "value": { "arrayValue": { "values": values } } }));
                }
                if let Some(e) = error {
                    a.push(text("error.type", e));
                }
                a.extend(common);
                let start = payload["otel"]["start_unix_nano"]
                    .as_u64()
                    .unwrap_or_else(|| end.saturating_sub(ms(&payload["latency_ms"])));
                Some(self.span(
                    ids(event, payload, "model"),
                    format!("{operation} {model}"),
                    (start, end),
                    error,
                    a,
                ))
            }
            "tool.called" => {
                if let Some(call) = payload["call_id"].as_str() {
                    self.tools.insert(open_call(event, call), end);
                }
                None
            }
            "tool.result" => {
                let tool = payload["tool"].as_str().unwrap_or("unknown");
                let mut a = vec![
                    text("gen_ai.operation.name", "execute_tool"),
                    text("gen_ai.tool.name", tool),
                ];
                let call = payload["call_id"].as_str();
                if let Some(call) = call {
                    a.push(text("gen_ai.tool.call.id", call));
                }
                if let Some(t) = payload["tool_type"].as_str() {
                    a.push(text("gen_ai.tool.type", t));
                }
                if let Some(e) = error {
                    a.push(text("error.type", e));
                }
                a.extend(common);
                let opened = call.and_then(|c| self.tools.remove(&open_call(event, c)));
                let start = payload["otel"]["start_unix_nano"]
                    .as_u64()
                    .or(opened)
                    .unwrap_or_else(|| end.saturating_sub(ms(&payload["latency_ms"])));
                Some(self.span(
                    ids(event, payload, "tool"),
                    format!("execute_tool {tool}"),
                    (start, end),
                    error,
                    a,
                ))
            }
            "agent.run_started" => {
                let run = conversation.unwrap_or(&event.id).to_owned();
                let agent = payload["agent"].as_str().unwrap_or("agent").to_owned();
                self.runs.insert(run, (end, agent));
                None
            }
            "agent.run_finished" | "agent.failed" => {
                let run = conversation.unwrap_or(&event.id).to_owned();
                let (opened, name) = self.runs.remove(&run).unwrap_or_default();
                let agent = payload["agent"].as_str().map_or(name, str::to_owned);
                let agent = if agent.is_empty() { "agent".to_owned() } else { agent };
                let start = payload["otel"]["start_unix_nano"]
                    .as_u64()
                    .or((opened > 0).then_some(opened))
                    .unwrap_or_else(|| end.saturating_sub(ms(&payload["duration_ms"])));
                let mut a = vec![text("gen_ai.operation.name", "invoke_agent")];
                if let Some(id) = payload["agent_id"].as_str() {
                    a.push(text("gen_ai.agent.id", id));
                }
                let error = if event.name == "agent.failed" {
                    Some(error.unwrap_or("agent failed"))
                } else {
                    None
                };
                if let Some(e) = error {
                    a.push(text("error.type", e));
                }
                a.extend(common);
                Some(self.span(
                    ids(event, payload, "agent"),
                    format!("invoke_agent {agent}"),
                    (start, end),
                    error,
                    a,
                ))
            }
            _ => None,
        }
    }

    /// The OTLP request body for the pending spans: the envelope around
    /// their JSON texts, joined.
    fn request(&self) -> String {
        let envelope = json!({
            "resourceSpans": [{
                "resource": { "attributes": [text("service.name", &self.settings.service)] },
                "scopeSpans": [{
                    "scope": { "name": "plugbus.otlp-export", "version": env!("CARGO_PKG_VERSION") },
                    "spans": ["SPANS"],
                }],
            }],
        })
        .to_string();
        let spans: Vec<&str> = self.pending.iter().map(|(_, s)| s.as_str()).collect();
        envelope.replacen("\"SPANS\"", &spans.join(","), 1)
    }

    /// Sends the pending spans; they stay pending if the collector does not
    /// take them.
    fn flush(&mut self, now: u64) -> plugbus_guest::Result {
        let Some(endpoint) = self.settings.endpoint.clone() else {
            return Err("no `endpoint` in [config]".into());
        };
        let count = self.pending.len();
        let body = self.request();
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match http::request(
                "POST",
                &endpoint,
                &[("content-type", "application/json")],
                body.as_bytes(),
            ) {
                Ok(r) if r.is_success() => {
                    self.pending.clear();
                    self.failed_at = None;
                    self.sent += count as u64;
                    info!("{count} spans exported ({} in all)", self.sent);
                    return Ok(());
                }
                Ok(r) if matches!(r.status, 429 | 502 | 503 | 504) && attempt < ATTEMPTS => {
                    last = format!("collector answered {}", r.status);
                }
                Ok(r) => {
                    last = format!(
                        "collector answered {}: {}",
                        r.status,
                        r.text().chars().take(200).collect::<String>()
                    );
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            }
        }
        self.failed_at = Some(now);
        warn!("{count} spans not exported ({last}); kept for the next attempt");
        Ok(())
    }
}

impl Plugin for OtlpExport {
    fn subscriptions(&self) -> Vec<String> {
        [
            "model_responded",
            "tool.called",
            "tool.result",
            "agent.run_started",
            "agent.run_finished",
            "agent.failed",
        ]
        .map(String::from)
        .to_vec()
    }

    fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
        let payload: Value = event.payload()?;
        let now = event.time_unix_nanos;
        if let Some(span) = self.on(event, &payload) {
            self.pending.push_back((now, span.to_string()));
            while self.pending.len() > self.settings.max_pending {
                self.pending.pop_front();
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    warn!(
                        "{} spans dropped: more than max_pending ({}) waiting",
                        self.dropped, self.settings.max_pending
                    );
                }
            }
        }
        let Some(&(oldest, _)) = self.pending.front() else {
            return Ok(());
        };
        let due = match self.failed_at {
            Some(failed) => now.saturating_sub(failed) >= self.settings.batch_nanos,
            None => {
                self.pending.len() >= self.settings.batch_spans
                    || now.saturating_sub(oldest) >= self.settings.batch_nanos
                    || matches!(event.name.as_str(), "agent.run_finished" | "agent.failed")
            }
        };
        if due { self.flush(now) } else { Ok(()) }
    }

    /// `{"pending", "sent", "dropped", "open_runs"}`: what waits, what went
    /// out, what a full queue cost.
    fn query(&self, _request: &Value) -> plugbus_guest::QueryResult {
        Ok(json!({
            "pending": self.pending.len(),
            "sent": self.sent,
            "dropped": self.dropped,
            "open_runs": self.runs.len(),
        }))
    }
}

#[cfg(target_arch = "wasm32")]
plugbus_guest::export_plugin!(OtlpExport, state, query);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_shaped_as_otlp_wants() {
        assert_eq!(trace_id("run-1"), trace_id("run-1"));
        assert_ne!(trace_id("run-1"), trace_id("run-2"));
        assert_eq!(trace_id("run-1").len(), 32);
        assert_eq!(span_id(&["agent", "run-1"]).len(), 16);
        assert_ne!(span_id(&["a", "bc"]), span_id(&["ab", "c"]));
    }
}
