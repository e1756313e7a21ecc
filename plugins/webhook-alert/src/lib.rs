//! webhook-alert: posts a JSON message to a webhook for the events it
//! subscribes to (by default `budget_exceeded`, `plugbus.plugin.quarantined`
//! and `alert.*`, e.g. latency-watch's `alert.latency`).
//!
//! - The URL comes from the `webhook_url` secret (`[secrets]`), so it is
//!   never in a manifest's text, a log or `GET /plugins`; its origin must be
//!   granted in `[http] allow`.
//! - `format = "generic"` posts `{"alert", "text", "event_id",
//!   "correlation_id", "time_unix_nanos", "payload"}`; `"slack"` posts
//!   `{"text"}` (Slack-compatible incoming webhooks).
//! - One alert per (event name, correlation id) by default (`dedupe =
//!   "none"`: every event); at most `per_minute` alerts per minute of event
//!   time (deterministic, so a replay decides exactly as the live run did).
//!   What was alerted is the plugin's state (`export_plugin!(…, state)`):
//!   kept across traps, reloads and restarts, so a restart does not alert
//!   again; and the host's request journal answers a replayed event's post
//!   without sending it twice.
//! - A webhook answering non-2xx, or not at all, makes the event an error
//!   (counted, logged); the alert is not retried, and not marked sent, so the
//!   next event of that (name, correlation id) tries again.

use std::collections::{BTreeSet, VecDeque};

use plugbus_guest::{Event, Plugin, http, info, warn};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Most (name, correlation id) pairs remembered: a long-running host sees
/// many runs; past this the oldest are forgotten (and could alert again).
const MAX_REMEMBERED: usize = 10_000;
const MINUTE_NANOS: u64 = 60_000_000_000;

#[derive(Serialize, Deserialize)]
struct WebhookAlert {
    /// (name, correlation id) pairs alerted, oldest first.
    sent: VecDeque<(String, String)>,
    #[serde(skip)]
    sent_set: BTreeSet<(String, String)>,
    /// Event times of the alerts of the last minute.
    recent: VecDeque<u64>,
    /// Alerts dropped by `per_minute`.
    dropped: u64,
    #[serde(skip, default = "Settings::read")]
    settings: Settings,
}

impl Default for WebhookAlert {
    fn default() -> Self {
        WebhookAlert {
            sent: VecDeque::new(),
            sent_set: BTreeSet::new(),
            recent: VecDeque::new(),
            dropped: 0,
            settings: Settings::read(),
        }
    }
}

struct Settings {
    slack: bool,
    dedupe: bool,
    per_minute: usize,
}

impl Settings {
    fn read() -> Settings {
        Settings {
            slack: plugbus_guest::config("format").as_deref() == Some("slack"),
            dedupe: plugbus_guest::config("dedupe").as_deref() != Some("none"),
            per_minute: plugbus_guest::config("per_minute")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10),
        }
    }
}

/// The alert's one-line text.
pub fn text(event_name: &str, correlation: Option<&str>, payload: &Value) -> String {
    let run = correlation.map(|c| format!(" (run {c})")).unwrap_or_default();
    match event_name {
        "budget_exceeded" => format!(
            "Budget exceeded{run}: ${:.4} spent of ${:.2}",
            payload["spent_usd"].as_f64().unwrap_or(0.0),
            payload["budget_usd"].as_f64().unwrap_or(0.0)
        ),
        "plugbus.plugin.quarantined" => format!(
            "Plugin {} quarantined after {} failures ({})",
            payload["name"].as_str().unwrap_or("?"),
            payload["count"],
            payload["failure"].as_str().unwrap_or("?")
        ),
        _ => format!("{event_name}{run}: {payload}"),
    }
}

impl WebhookAlert {
    fn body(&self, event: &Event, payload: Value) -> Value {
        let text = text(&event.name, event.correlation_id.as_deref(), &payload);
        if self.settings.slack {
            json!({ "text": text })
        } else {
            json!({
                "alert": event.name,
                "text": text,
                "event_id": event.id,
                "correlation_id": event.correlation_id,
                "time_unix_nanos": event.time_unix_nanos,
                "payload": payload,
            })
        }
    }

    fn remember(&mut self, key: (String, String)) {
        if self.sent_set.insert(key.clone()) {
            self.sent.push_back(key);
            if self.sent.len() > MAX_REMEMBERED
                && let Some(old) = self.sent.pop_front()
            {
                self.sent_set.remove(&old);
            }
        }
    }
}

impl Plugin for WebhookAlert {
    fn subscriptions(&self) -> Vec<String> {
        vec![
            "budget_exceeded".into(),
            "plugbus.plugin.quarantined".into(),
            "alert.*".into(),
        ]
    }

    fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
        if self.sent_set.len() != self.sent.len() {
            // Restored from a snapshot: rebuild the index.
            self.sent_set = self.sent.iter().cloned().collect();
        }
        let key = (event.name.clone(), event.correlation_id.clone().unwrap_or_default());
        if self.settings.dedupe && self.sent_set.contains(&key) {
            return Ok(());
        }
        let now = event.time_unix_nanos;
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= MINUTE_NANOS)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.settings.per_minute {
            self.dropped += 1;
            warn!(
                "alert for {} dropped: per_minute ({}) reached ({} dropped so far)",
                event.name, self.settings.per_minute, self.dropped
            );
            return Ok(());
        }
        let Some(url) = plugbus_guest::config("webhook_url") else {
            return Err("no `webhook_url` in [secrets] (or [config])".into());
        };
        let payload: Value = event.payload()?;
        let response = http::post_json(&url, &self.body(event, payload))?;
        if !response.is_success() {
            return Err(format!(
                "webhook answered {}: {}",
                response.status,
                response.text().chars().take(200).collect::<String>()
            )
            .into());
        }
        info!("alerted {}", event.name);
        self.recent.push_back(now);
        if self.settings.dedupe {
            self.remember(key);
        }
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
plugbus_guest::export_plugin!(WebhookAlert, state);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_name_what_happened() {
        let t = text(
            "budget_exceeded",
            Some("run-1"),
            &json!({"spent_usd": 0.0712, "budget_usd": 0.05}),
        );
        assert_eq!(t, "Budget exceeded (run run-1): $0.0712 spent of $0.05");
        let t = text(
            "plugbus.plugin.quarantined",
            None,
            &json!({"name": "x", "count": 5, "failure": "trap"}),
        );
        assert_eq!(t, "Plugin x quarantined after 5 failures (trap)");
    }
}
