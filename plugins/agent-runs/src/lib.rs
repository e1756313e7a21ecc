//! agent-runs: the read model of agent runs (CQRS), queryable while it runs
//! and rebuilt from the event log with `plugbus query`.
//!
//! Every event with a correlation id belongs to a run (the id). Per run it
//! keeps `status` (`running` from its first event, `completed` on
//! `agent.completed` or `agent.run_finished`, `failed` on `agent.failed`),
//! `tools` (in call order, from `tool.called` `tool` and
//! `agent.tool_called` `tool_name`), `tokens` (`model_responded`
//! `usage.prompt_tokens + usage.completion_tokens`, plus
//! `agent.tokens_generated` `count`), `cost_usd` (`model_responded`
//! `cost_usd`), `errors` (`agent.failed` `error`, and the `error` field of a
//! `tool.result`), `events`, `first_ns`, `last_ns` and `duration_ms`.
//!
//! A run belongs to the agent named by its first event (payload `agent` or
//! `agent_id`, else the event's source). Per agent: `runs`, `tokens`,
//! `errors`, and `avg_duration_ms` over its finished runs (each run's
//! duration when it first finished; `null` before any finished).
//!
//! The host's own announcements (`plugbus.*`) are not agent activity and
//! are skipped; so are events without a correlation id (counted).
//!
//! Queries: `{"run": "<id>"}`, `{"runs": {"status": "running", "limit": 50}}`
//! (newest first; both fields optional, `limit` at most 1000),
//! `{"agents": true}` and `{"summary": true}`.
//!
//! Memory is bounded by `[config] max_runs` (default 20,000): past it the
//! oldest finished runs are evicted and counted (their agents' totals
//! stay). State is durable (`export_plugin!(AgentRuns, state, query)`).

use std::collections::{BTreeMap, VecDeque};

use plugbus_guest::{Event, Plugin, QueryResult, export_plugin, warn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Runs held when the manifest does not say: 20,000 runs of a few hundred
/// bytes each stay well inside the default 64 MiB memory cap, and their
/// snapshot (~6 MB of JSON) inside the host's 16 MiB bound.
const DEFAULT_MAX_RUNS: usize = 20_000;

/// Most runs one `{"runs": …}` answer lists.
const MAX_LIMIT: u64 = 1000;

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum Status {
    Running,
    Completed,
    Failed,
}

#[derive(Serialize, Deserialize)]
struct Run {
    agent: String,
    status: Status,
    tools: Vec<String>,
    tokens: u64,
    cost_usd: f64,
    errors: Vec<String>,
    events: u64,
    first_ns: u64,
    last_ns: u64,
    /// Start order: newest-first listings sort on it.
    order: u64,
    /// Set when the run first finished (completed or failed).
    finished: bool,
}

impl Run {
    fn duration_ms(&self) -> u64 {
        self.last_ns.saturating_sub(self.first_ns) / 1_000_000
    }

    fn to_json(&self, id: &str) -> Value {
        json!({
            "run": id,
            "agent": self.agent,
            "status": self.status,
            "tools": self.tools,
            "tokens": self.tokens,
            "cost_usd": self.cost_usd,
            "errors": self.errors,
            "events": self.events,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "duration_ms": self.duration_ms(),
        })
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Agent {
    runs: u64,
    tokens: u64,
    errors: u64,
    finished: u64,
    duration_ms_total: u64,
}

#[derive(Serialize, Deserialize)]
struct AgentRuns {
    runs: BTreeMap<String, Run>,
    agents: BTreeMap<String, Agent>,
    /// Finished runs, oldest first: the eviction order.
    finished: VecDeque<String>,
    started: u64,
    evicted: u64,
    uncorrelated: u64,
    /// From the manifest, not the snapshot.
    #[serde(skip, default = "configured_max_runs")]
    max_runs: usize,
}

fn configured_max_runs() -> usize {
    plugbus_guest::config("max_runs").map_or(DEFAULT_MAX_RUNS, |v| match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => n,
        _ => {
            warn!("config max_runs = {v:?} is not a positive number; keeping {DEFAULT_MAX_RUNS}");
            DEFAULT_MAX_RUNS
        }
    })
}

impl Default for AgentRuns {
    fn default() -> Self {
        AgentRuns {
            runs: BTreeMap::new(),
            agents: BTreeMap::new(),
            finished: VecDeque::new(),
            started: 0,
            evicted: 0,
            uncorrelated: 0,
            max_runs: configured_max_runs(),
        }
    }
}

fn text(payload: &Value, field: &str) -> Option<String> {
    payload.get(field).and_then(Value::as_str).map(str::to_owned)
}

fn count(payload: &Value, pointer: &str) -> u64 {
    payload.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// An error field as text: strings as they are, anything else as JSON.
fn error_text(payload: &Value) -> Option<String> {
    match payload.get("error")? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

impl AgentRuns {
    fn evict(&mut self) {
        while self.runs.len() > self.max_runs {
            let Some(id) = self.finished.pop_front() else { break };
            if self.runs.remove(&id).is_some() {
                self.evicted += 1;
            }
        }
    }

    fn list(&self, filter: &Value) -> QueryResult {
        let status = match filter.get("status") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                serde_json::from_value::<Status>(Value::String(s.clone()))
                    .map_err(|_| format!("unknown status `{s}` (running, completed or failed)"))?,
            ),
            Some(other) => return Err(format!("`status` must be a string, not {other}").into()),
        };
        let limit = match filter.get("limit") {
            None | Some(Value::Null) => 50,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"))?,
        };
        let mut runs: Vec<(&String, &Run)> = self
            .runs
            .iter()
            .filter(|(_, r)| status.as_ref().is_none_or(|s| *s == r.status))
            .collect();
        runs.sort_unstable_by_key(|(_, r)| std::cmp::Reverse(r.order));
        runs.truncate(limit as usize);
        Ok(json!({ "runs": runs.into_iter().map(|(id, r)| r.to_json(id)).collect::<Vec<_>>() }))
    }
}

impl Plugin for AgentRuns {
    fn subscriptions(&self) -> Vec<String> {
        vec!["**".into()]
    }

    fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
        if event.name.starts_with("plugbus.") {
            return Ok(());
        }
        let Some(id) = event.correlation_id.as_deref() else {
            self.uncorrelated += 1;
            return Ok(());
        };
        // A read model takes what it can from odd payloads rather than failing.
        let payload: Value = event.json().unwrap_or(Value::Null);
        let time = event.time_unix_nanos;
        if !self.runs.contains_key(id) {
            let agent = text(&payload, "agent")
                .or_else(|| text(&payload, "agent_id"))
                .unwrap_or_else(|| event.source.clone());
            self.agents.entry(agent.clone()).or_default().runs += 1;
            self.started += 1;
            let run = Run {
                agent,
                status: Status::Running,
                tools: Vec::new(),
                tokens: 0,
                cost_usd: 0.0,
                errors: Vec::new(),
                events: 0,
                first_ns: time,
                last_ns: time,
                order: self.started,
                finished: false,
            };
            self.runs.insert(id.to_owned(), run);
        }
        // Inserted just above when missing.
        let run = self.runs.get_mut(id).expect("the run exists");
        run.events += 1;
        run.first_ns = run.first_ns.min(time);
        run.last_ns = run.last_ns.max(time);
        let (mut tokens, mut error) = (0, None);
        match event.name.as_str() {
            "model_responded" => {
                tokens = count(&payload, "/usage/prompt_tokens") + count(&payload, "/usage/completion_tokens");
                if let Some(cost) = payload
                    .get("cost_usd")
                    .and_then(Value::as_f64)
                    .filter(|c| c.is_finite())
                {
                    run.cost_usd += cost;
                }
            }
            "agent.tokens_generated" => tokens = count(&payload, "/count"),
            "tool.called" => run.tools.extend(text(&payload, "tool")),
            #[cfg(not(feature = "v1-bug"))]
            "agent.tool_called" => run.tools.extend(text(&payload, "tool_name")),
            "tool.result" => error = error_text(&payload),
            "agent.failed" => {
                run.status = Status::Failed;
                error = Some(error_text(&payload).unwrap_or_else(|| "failed".into()));
            }
            "agent.completed" | "agent.run_finished" => run.status = Status::Completed,
            _ => {}
        }
        run.tokens += tokens;
        let agent = self.agents.entry(run.agent.clone()).or_default();
        agent.tokens += tokens;
        if let Some(error) = error {
            run.errors.push(error);
            agent.errors += 1;
        }
        if run.status != Status::Running && !run.finished {
            run.finished = true;
            agent.finished += 1;
            agent.duration_ms_total += run.duration_ms();
            self.finished.push_back(id.to_owned());
            self.evict();
        }
        Ok(())
    }

    fn query(&self, request: &Value) -> QueryResult {
        if let Some(id) = request.get("run") {
            let id = id.as_str().ok_or("`run` must be a correlation id (a string)")?;
            return match self.runs.get(id) {
                Some(run) => Ok(run.to_json(id)),
                None => Err(format!("no run `{id}` (never seen, or evicted)").into()),
            };
        }
        if let Some(filter) = request.get("runs") {
            return self.list(filter);
        }
        if request.get("agents").is_some() {
            let agents: serde_json::Map<String, Value> = self
                .agents
                .iter()
                .map(|(name, a)| {
                    let avg = (a.finished > 0).then(|| a.duration_ms_total as f64 / a.finished as f64);
                    (
                        name.clone(),
                        json!({ "runs": a.runs, "tokens": a.tokens, "errors": a.errors, "avg_duration_ms": avg }),
                    )
                })
                .collect();
            return Ok(json!({ "agents": agents }));
        }
        if request.get("summary").is_some() {
            let running = self.runs.values().filter(|r| r.status == Status::Running).count();
            return Ok(json!({
                "runs": self.runs.len(),
                "running": running,
                "started": self.started,
                "evicted": self.evicted,
                "uncorrelated": self.uncorrelated,
                "max_runs": self.max_runs,
            }));
        }
        Err(r#"unknown query: ask {"run": "<id>"}, {"runs": {"status": "running", "limit": 50}}, {"agents": true} or {"summary": true}"#.into())
    }
}

export_plugin!(AgentRuns, state, query);
