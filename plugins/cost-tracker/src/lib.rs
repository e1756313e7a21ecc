//! cost-tracker: sums tokens and USD from `model_responded` events, logs the
//! running totals, and emits `budget_exceeded` once when spending passes the
//! budget set in the manifest (`[config] budget_usd = "5.00"`).
//!
//! A call costs its payload's `cost_usd` when it has one (hand-written emits,
//! adapters that know the price). When it has none, as events mapped from
//! OpenTelemetry GenAI spans never do (docs/opentelemetry.md), and its
//! `usage` reports tokens, the call is priced from the price table: the
//! built-in [`prices::DEFAULT_PRICES`] (list prices per 1M tokens, dated
//! [`prices::DEFAULT_PRICES_DATE`]) extended by the manifest's `prices`, a
//! JSON object in a TOML string whose entries replace built-in ones of the
//! same key and add others:
//!
//! ```toml
//! [config]
//! prices = '''{"gpt-4.1-mini": {"input": 0.40, "output": 1.60, "cache_read": 0.10},
//!              "my-model": {"input": 1.0, "output": 3.0}}'''
//! ```
//!
//! USD per 1M tokens; `cache_read` and `cache_creation` default to `input`.
//! A model is matched by its exact name, else by the longest key that is a
//! prefix of it (`gpt-4.1-mini-2025-04-14` → `gpt-4.1-mini`), else by the
//! payload's `request_model` the same way. Tokens: `usage.prompt_tokens`
//! (or `usage.input_tokens`), `usage.completion_tokens` (or
//! `usage.output_tokens`), `usage.cache_read_tokens` and
//! `usage.cache_creation_tokens`. Cache tokens are part of the prompt tokens
//! (the OpenTelemetry convention): they are priced at their own rates and
//! the rest of the prompt at the input rate (see [`prices::cost_usd`]).
//!
//! A call priced from the table is followed by a `cost.priced` event
//! (`model`, `cost_usd`, `prompt_tokens`, `completion_tokens`,
//! `cache_read_tokens`, `cache_creation_tokens`, `priced_as`: the key used,
//! `trigger_event_id`) in the call's run, so read models (agent-runs) can
//! count the cost; a call that carried `cost_usd` gets none. A model in no
//! table costs $0: it is counted per model and logged once (`warn`), never
//! an error. A call without token counts costs $0 and is not priced.
//!
//! A malformed `prices` is logged (`error`) and the built-in table alone is
//! used. Its totals are durable (`export_plugin!(CostTracker, state)`): a
//! trap, a hot reload or a restart with the event log brings them back, so
//! the budget is enforced over the whole run and reported once. Snapshots
//! of builds without the price table restore too (the new field defaults).

// A native build (`cargo test -p cost-tracker`) exports nothing, so the
// plugin itself is unused there; only the price table's tests run.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod prices;

use std::collections::BTreeMap;

use plugbus_guest::{Event, Plugin, error, info, warn};
use prices::{PriceTable, Tokens};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The token counts of a `model_responded` payload's `usage`: the names the
/// first-party events use and their aliases.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Usage {
    prompt_tokens: Option<u64>,
    input_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_tokens: Option<u64>,
    cache_creation_tokens: Option<u64>,
}

impl Usage {
    fn tokens(&self) -> Tokens {
        Tokens {
            prompt: self.prompt_tokens.or(self.input_tokens).unwrap_or(0),
            completion: self.completion_tokens.or(self.output_tokens).unwrap_or(0),
            cache_read: self.cache_read_tokens.unwrap_or(0),
            cache_creation: self.cache_creation_tokens.unwrap_or(0),
        }
    }

    /// Whether it reports any token count: a call without one is not priced.
    fn reported(&self) -> bool {
        [
            self.prompt_tokens,
            self.input_tokens,
            self.completion_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_creation_tokens,
        ]
        .iter()
        .any(Option::is_some)
    }
}

#[derive(Deserialize)]
struct ModelResponded {
    #[serde(default)]
    model: Option<String>,
    /// Read leniently: only a string is used, for pricing.
    #[serde(default)]
    request_model: Option<Value>,
    #[serde(default)]
    usage: Usage,
    #[serde(default)]
    cost_usd: Option<f64>,
}

#[derive(Default, Serialize, Deserialize)]
struct Totals {
    calls: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
}

#[derive(Serialize, Deserialize)]
struct CostTracker {
    total: Totals,
    by_model: BTreeMap<String, Totals>,
    /// From the manifest, not the snapshot: a reloaded manifest's budget applies.
    #[serde(skip, default = "configured_budget")]
    budget_usd: Option<f64>,
    budget_reported: bool,
    /// Calls that needed a price and whose model is in no table, per model.
    /// Older snapshots lack it: empty.
    #[serde(default)]
    unpriced: BTreeMap<String, u64>,
    /// From the manifest (and the built-in table), not the snapshot.
    #[serde(skip, default = "configured_prices")]
    prices: PriceTable,
}

/// The manifest's `budget_usd`, if it is a non-negative number.
fn configured_budget() -> Option<f64> {
    plugbus_guest::config("budget_usd").and_then(|b| match b.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Some(v),
        _ => {
            warn!("config budget_usd = {b:?} is not a non-negative number; no budget enforced");
            None
        }
    })
}

/// The built-in price table extended by the manifest's `prices`, if any.
fn configured_prices() -> PriceTable {
    let builtin = PriceTable::builtin();
    match plugbus_guest::config("prices") {
        None => builtin,
        Some(text) => match PriceTable::parse(&text) {
            Ok(table) => builtin.extended_with(table),
            Err(e) => {
                error!("config prices: {e}; pricing from the built-in table only");
                builtin
            }
        },
    }
}

impl Default for CostTracker {
    fn default() -> Self {
        CostTracker {
            total: Totals::default(),
            by_model: BTreeMap::new(),
            budget_usd: configured_budget(),
            budget_reported: false,
            unpriced: BTreeMap::new(),
            prices: configured_prices(),
        }
    }
}

impl Plugin for CostTracker {
    fn subscriptions(&self) -> Vec<String> {
        vec!["model_responded".into()]
    }

    fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
        let r: ModelResponded = event.payload()?;
        if let Some(cost) = r.cost_usd
            && !(cost.is_finite() && cost >= 0.0)
        {
            return Err(format!("cost_usd {cost} is not a non-negative number").into());
        }
        let model = r.model.unwrap_or_else(|| "unknown".into());
        let tokens = r.usage.tokens();
        // The cost, and the table key when it was priced from the table.
        let (cost, priced_as) = match r.cost_usd {
            Some(cost) => (cost, None),
            None if !r.usage.reported() => (0.0, None),
            None => {
                let request_model = r.request_model.as_ref().and_then(Value::as_str);
                match prices::price_for(&self.prices, &model, request_model) {
                    Some((key, price)) => (prices::cost_usd(price, &tokens), Some(key.to_owned())),
                    None => {
                        let calls = self.unpriced.entry(model.clone()).or_insert(0);
                        if *calls == 0 {
                            warn!(
                                "no price for model `{model}` (built-in table and config prices): its calls count $0; add it to [config] prices"
                            );
                        }
                        *calls += 1;
                        (0.0, None)
                    }
                }
            }
        };
        for t in [&mut self.total, self.by_model.entry(model.clone()).or_default()] {
            t.calls += 1;
            t.prompt_tokens += tokens.prompt;
            t.completion_tokens += tokens.completion;
            t.cost_usd += cost;
        }
        let t = &self.total;
        info!(
            "{} calls, {} prompt + {} completion tokens, ${:.4} total ({model}: ${:.4})",
            t.calls, t.prompt_tokens, t.completion_tokens, t.cost_usd, self.by_model[&model].cost_usd
        );
        // Emitted before the budget check, which runs even if this fails.
        let priced = priced_as.map(|key| {
            plugbus_guest::emit(
                "cost.priced",
                &json!({
                    "model": model,
                    "cost_usd": cost,
                    "prompt_tokens": tokens.prompt,
                    "completion_tokens": tokens.completion,
                    "cache_read_tokens": tokens.cache_read,
                    "cache_creation_tokens": tokens.cache_creation,
                    "priced_as": key,
                    "trigger_event_id": event.id,
                }),
            )
        });
        if let Some(budget) = self.budget_usd
            && !self.budget_reported
            && t.cost_usd > budget
        {
            self.budget_reported = true;
            warn!("budget of ${budget:.2} exceeded: ${:.4} spent", t.cost_usd);
            plugbus_guest::emit(
                "budget_exceeded",
                &json!({
                    "budget_usd": budget,
                    "spent_usd": t.cost_usd,
                    "calls": t.calls,
                    "tokens": t.prompt_tokens + t.completion_tokens,
                    "trigger_event_id": event.id,
                }),
            )?;
        }
        priced.unwrap_or(Ok(()))
    }
}

// Only in the component: a native build (`cargo test -p cost-tracker`, for
// the price table's unit tests) has no host to export to.
#[cfg(target_arch = "wasm32")]
plugbus_guest::export_plugin!(CostTracker, state);
