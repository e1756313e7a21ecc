//! agent-runs: the read model of agent runs (CQRS), queryable while it runs
//! and rebuilt from the event log with `plugbus query`.
//!
//! Every event with a correlation id belongs to a run (the id). It reads the
//! one vocabulary of docs/opentelemetry.md, so hand-written emits and events
//! mapped from OpenTelemetry GenAI spans build the same runs. Per run it
//! keeps `status` (`running` from its first event, `completed` on
//! `agent.completed` or `agent.run_finished`, `failed` on `agent.failed`),
//! `tools` (in call order, from `tool.called` `tool` and
//! `agent.tool_called` `tool_name`), `tool_calls` (those events, named or
//! not), `model_calls` (`model_responded` events), `tokens`
//! (`model_responded` `usage.prompt_tokens` or `usage.input_tokens`, plus
//! `usage.completion_tokens` or `usage.output_tokens`; cache tokens are part
//! of the prompt tokens and not added again; plus `agent.tokens_generated`
//! `count`), `cost_usd` (`model_responded` `cost_usd`, and `cost.priced`
//! `cost_usd`: cost-tracker prices a call without one), `errors`
//! (`agent.failed` `error`, and the `error` field of a `tool.result` or a
//! `model_responded`), `events`, `first_ns`, `last_ns` and `duration_ms`
//! (min and max event times: spans arrive child-first, out of order).
//!
//! The run's agent is named by its first event (payload `agent`, else
//! `agent_id`, else the event's source). Spans reach the bus when they end,
//! children before the `invoke_agent` span that names the run, so a later
//! event renames it: an `agent.run_started` naming an agent always does
//! (the earliest one, by event time, wins), and any event naming one does
//! when the run's agent came only from the source. The per-agent totals
//! move with the run. Runs restored from a snapshot taken before this rule
//! keep their agent.
//!
//! Per agent: `runs`, `tokens`, `errors`, and `avg_duration_ms` over its
//! finished runs (each run's duration when it first finished; `null` before
//! any finished).
//!
//! The host's own announcements (`plugbus.*`) are not agent activity and
//! are skipped; so are events without a correlation id (counted).
//!
//! Queries: `{"run": "<id>"}`, `{"runs": {"status": "running", "agent":
//! "planner", "limit": 50}}` (newest first; every field optional, `limit`
//! at most 1000),
//! `{"agents": true}` and `{"summary": true}`.
//!
//! Memory is bounded by `[config] max_runs` (default 20,000): past it the
//! oldest finished runs are evicted and counted (their agents' totals
//! stay). State is durable (`export_plugin!(AgentRuns, state, query)`);
//! snapshots of earlier builds restore (new fields default).

use std::collections::{BTreeMap, VecDeque};

use plugbus_guest::{Event, Plugin, QueryResult, export_plugin, warn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Runs held when the manifest does not say: 20,000 runs of a few hundred
/// bytes each stay well inside the default 64 MiB memory cap, and their
/// snapshot (~7 MB of JSON) inside the host's 16 MiB bound.
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

/// How a run's agent was named, weakest first: a stronger naming renames it.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "snake_case")]
enum Naming {
    /// Restored from a snapshot of a build that did not record it: kept.
    #[default]
    Kept,
    /// The first event's source: no payload has named an agent yet.
    Source,
    /// A payload's `agent` (or `agent_id`).
    Payload,
    /// An `agent.run_started`'s, at this event time: only an earlier one renames it.
    RunStarted(u64),
}

impl Naming {
    /// The naming an event that names an agent gives a run named `self`, if
    /// it renames the run.
    fn renamed_by(self, run_started: bool, time: u64) -> Option<Naming> {
        match (self, run_started) {
            (Naming::Kept, _) => None,
            (Naming::Source | Naming::Payload, true) => Some(Naming::RunStarted(time)),
            (Naming::RunStarted(at), true) if time < at => Some(Naming::RunStarted(time)),
            (Naming::Source, false) => Some(Naming::Payload),
            _ => None,
        }
    }
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
    /// `model_responded` events. Older snapshots lack the fields below: 0.
    #[serde(default)]
    model_calls: u64,
    /// `tool.called` and `agent.tool_called` events.
    #[serde(default)]
    tool_calls: u64,
    /// How its agent was named: what may rename it.
    #[serde(default)]
    naming: Naming,
    /// Its duration when it first finished: what its agent's average counts.
    #[serde(default)]
    finished_ms: u64,
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
            "model_calls": self.model_calls,
            "tool_calls": self.tool_calls,
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

/// The first of `pointers` that holds a count (a field and its aliases).
fn first_count(payload: &Value, pointers: &[&str]) -> u64 {
    pointers
        .iter()
        .find_map(|p| payload.pointer(p).and_then(Value::as_u64))
        .unwrap_or(0)
}

/// A cost field as USD, if it is a finite number.
fn cost(payload: &Value) -> Option<f64> {
    payload
        .get("cost_usd")
        .and_then(Value::as_f64)
        .filter(|c| c.is_finite())
}

/// An error field as text: strings as they are, anything else as JSON.
fn error_text(payload: &Value) -> Option<String> {
    match payload.get("error")? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Moves `run` and its contributions (a run, its tokens, errors and finished
/// duration) from its agent to `to`; an agent left with no runs is dropped.
fn reattribute(agents: &mut BTreeMap<String, Agent>, run: &mut Run, to: String) {
    if run.agent == to {
        return;
    }
    let errors = run.errors.len() as u64;
    if let Some(from) = agents.get_mut(&run.agent) {
        from.runs = from.runs.saturating_sub(1);
        from.tokens = from.tokens.saturating_sub(run.tokens);
        from.errors = from.errors.saturating_sub(errors);
        if run.finished {
            from.finished = from.finished.saturating_sub(1);
            from.duration_ms_total = from.duration_ms_total.saturating_sub(run.finished_ms);
        }
        if from.runs == 0 {
            agents.remove(&run.agent);
        }
    }
    let into = agents.entry(to.clone()).or_default();
    into.runs += 1;
    into.tokens = into.tokens.saturating_add(run.tokens);
    into.errors += errors;
    if run.finished {
        into.finished += 1;
        into.duration_ms_total = into.duration_ms_total.saturating_add(run.finished_ms);
    }
    run.agent = to;
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
        let agent = match filter.get("agent") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => Some(a.as_str()),
            Some(other) => return Err(format!("`agent` must be a string, not {other}").into()),
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
            .filter(|(_, r)| agent.is_none_or(|a| a == r.agent))
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
        let named = text(&payload, "agent").or_else(|| text(&payload, "agent_id"));
        let run_started = event.name == "agent.run_started";
        if !self.runs.contains_key(id) {
            let (agent, naming) = match &named {
                Some(agent) if run_started => (agent.clone(), Naming::RunStarted(time)),
                Some(agent) => (agent.clone(), Naming::Payload),
                None => (event.source.clone(), Naming::Source),
            };
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
                model_calls: 0,
                tool_calls: 0,
                naming,
                finished_ms: 0,
            };
            self.runs.insert(id.to_owned(), run);
        }
        // Inserted just above when missing.
        let run = self.runs.get_mut(id).expect("the run exists");
        if let Some(agent) = named
            && let Some(naming) = run.naming.renamed_by(run_started, time)
        {
            run.naming = naming;
            reattribute(&mut self.agents, run, agent);
        }
        run.events += 1;
        run.first_ns = run.first_ns.min(time);
        run.last_ns = run.last_ns.max(time);
        let (mut tokens, mut error) = (0u64, None);
        match event.name.as_str() {
            "model_responded" => {
                run.model_calls += 1;
                tokens = first_count(&payload, &["/usage/prompt_tokens", "/usage/input_tokens"]).saturating_add(
                    first_count(&payload, &["/usage/completion_tokens", "/usage/output_tokens"]),
                );
                run.cost_usd += cost(&payload).unwrap_or(0.0);
                error = error_text(&payload);
            }
            // cost-tracker's price for a call that carried no `cost_usd`.
            "cost.priced" => run.cost_usd += cost(&payload).unwrap_or(0.0),
            "agent.tokens_generated" => tokens = count(&payload, "/count"),
            "tool.called" => {
                run.tool_calls += 1;
                run.tools.extend(text(&payload, "tool"));
            }
            #[cfg(not(feature = "v1-bug"))]
            "agent.tool_called" => {
                run.tool_calls += 1;
                run.tools.extend(text(&payload, "tool_name"));
            }
            "tool.result" => error = error_text(&payload),
            "agent.failed" => {
                run.status = Status::Failed;
                error = Some(error_text(&payload).unwrap_or_else(|| "failed".into()));
            }
            "agent.completed" | "agent.run_finished" => run.status = Status::Completed,
            _ => {}
        }
        run.tokens = run.tokens.saturating_add(tokens);
        let agent = self.agents.entry(run.agent.clone()).or_default();
        agent.tokens = agent.tokens.saturating_add(tokens);
        if let Some(error) = error {
            run.errors.push(error);
            agent.errors += 1;
        }
        if run.status != Status::Running && !run.finished {
            run.finished = true;
            run.finished_ms = run.duration_ms();
            agent.finished += 1;
            agent.duration_ms_total += run.finished_ms;
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
