//! The payload every benchmark emits, shared by `plugbus bench` and the
//! criterion benches: a realistic ~200-byte `model_responded`.

use serde_json::{Value, json};

/// The `i`-th event's payload (token counts vary so nothing is constant-folded).
pub fn payload(i: u64) -> Value {
    json!({
        "model": "gpt-4.1-mini",
        "usage": { "prompt_tokens": 1200 + (i % 7), "completion_tokens": 300 + (i % 5) },
        "cost_usd": 0.00123,
        "latency_ms": 840,
        "request_id": "req_7f3a9c21",
        "finish_reason": "stop"
    })
}
