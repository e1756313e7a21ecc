//! token-counter: adds up the tokens of `model_responded` events. Small and
//! silent on purpose: it is the observer `plugbus bench` compares with a
//! native Rust handler doing exactly the same work (parse the payload JSON,
//! add two numbers).
//!
//! Its totals are durable (`export_plugin!(TokenCounter, state)`), and a
//! `token-counter.report` event makes it emit `token-counter.totals` with
//! them, which is how the tests read its state from outside.
//!
//! `[config] repeat = "N"` (default 1) does the work N times per event: the
//! benchmark measures the plugin's own work per event that way, as a loop
//! inside one call, to tell it apart from what the host adds per event.

use plugbus_guest::{Event, Plugin, export_plugin};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Usage {
    prompt_tokens: u64,
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct ModelResponded {
    #[serde(default)]
    usage: Usage,
}

#[derive(Serialize, Deserialize)]
struct TokenCounter {
    tokens: u64,
    events: u64,
    /// From the manifest, not the snapshot.
    #[serde(skip, default = "repeat")]
    repeat: u64,
}

fn repeat() -> u64 {
    plugbus_guest::config("repeat")
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
}

impl Default for TokenCounter {
    fn default() -> Self {
        TokenCounter {
            tokens: 0,
            events: 0,
            repeat: repeat(),
        }
    }
}

impl Plugin for TokenCounter {
    fn subscriptions(&self) -> Vec<String> {
        vec!["model_responded".into(), "token-counter.report".into()]
    }

    fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
        if event.name == "token-counter.report" {
            return plugbus_guest::emit(
                "token-counter.totals",
                &serde_json::json!({ "tokens": self.tokens, "events": self.events }),
            );
        }
        for _ in 1..self.repeat {
            let r: ModelResponded = std::hint::black_box(event.payload()?);
            std::hint::black_box(r.usage.prompt_tokens + r.usage.completion_tokens);
        }
        let r: ModelResponded = event.payload()?;
        self.tokens += r.usage.prompt_tokens + r.usage.completion_tokens;
        self.events += 1;
        if self.events.is_multiple_of(100_000) {
            plugbus_guest::info!("{} tokens over {} events", self.tokens, self.events);
        }
        Ok(())
    }
}

export_plugin!(TokenCounter, state);
