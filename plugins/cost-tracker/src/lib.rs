//! cost-tracker: sums tokens and USD from `model_responded` events, logs the
//! running totals, and emits `budget_exceeded` once when spending passes the
//! budget set in the manifest (`[config] budget_usd = "5.00"`).
//!
//! Its totals are durable (`export_plugin!(CostTracker, state)`): a trap, a
//! hot reload or a restart with the event log brings them back, so the
//! budget is enforced over the whole run and reported once.

use std::collections::BTreeMap;

use plugbus_guest::{Event, Plugin, export_plugin, info, warn};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct ModelResponded {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Usage,
    #[serde(default)]
    cost_usd: f64,
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

impl Default for CostTracker {
    fn default() -> Self {
        CostTracker {
            total: Totals::default(),
            by_model: BTreeMap::new(),
            budget_usd: configured_budget(),
            budget_reported: false,
        }
    }
}

impl Plugin for CostTracker {
    fn subscriptions(&self) -> Vec<String> {
        vec!["model_responded".into()]
    }

    fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
        let r: ModelResponded = event.payload()?;
        if !(r.cost_usd.is_finite() && r.cost_usd >= 0.0) {
            return Err(format!("cost_usd {} is not a non-negative number", r.cost_usd).into());
        }
        let model = r.model.unwrap_or_else(|| "unknown".into());
        for t in [&mut self.total, self.by_model.entry(model.clone()).or_default()] {
            t.calls += 1;
            t.prompt_tokens += r.usage.prompt_tokens;
            t.completion_tokens += r.usage.completion_tokens;
            t.cost_usd += r.cost_usd;
        }
        let t = &self.total;
        info!(
            "{} calls, {} prompt + {} completion tokens, ${:.4} total ({model}: ${:.4})",
            t.calls, t.prompt_tokens, t.completion_tokens, t.cost_usd, self.by_model[&model].cost_usd
        );
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
        Ok(())
    }
}

export_plugin!(CostTracker, state);
