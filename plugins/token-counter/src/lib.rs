//! token-counter: adds up the tokens of `model_responded` events. Small and
//! silent on purpose: it is the observer `plugbus bench` compares with a
//! native Rust handler doing exactly the same work (parse the payload JSON,
//! add two numbers).

use plugbus_guest::{Event, Plugin, export_plugin};
use serde::Deserialize;

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

#[derive(Default)]
struct TokenCounter {
    tokens: u64,
    events: u64,
}

impl Plugin for TokenCounter {
    fn subscriptions(&self) -> Vec<String> {
        vec!["model_responded".into()]
    }

    fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
        let r: ModelResponded = event.payload()?;
        self.tokens += r.usage.prompt_tokens + r.usage.completion_tokens;
        self.events += 1;
        if self.events.is_multiple_of(100_000) {
            plugbus_guest::info!("{} tokens over {} events", self.tokens, self.events);
        }
        Ok(())
    }
}

export_plugin!(TokenCounter);
