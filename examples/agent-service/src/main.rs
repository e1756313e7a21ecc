//! An agent service embedding plugbus: the agent loop emits events, Wasm
//! plugins observe them (cost tracking, audit, logging), and native handlers
//! react — here, the agent stops when the cost-tracker plugin reports that
//! the budget is exceeded. A broken plugin in the directory changes nothing
//! for the agent.
//!
//! Run: `cargo run -p agent-service -- plugins/dist` (after `make plugins`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use plugbus::{Bus, Event};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let dir = std::env::args().nth(1).unwrap_or_else(|| "plugins/dist".into());

    let bus = Bus::builder()
        .plugin_dir(&dir)
        .history(256)
        .on_failure(|event, handler, failure| {
            println!("  [alert] {handler} failed on {}: {failure}", event.name());
        })
        .build()
        .await?;
    for p in bus.plugins() {
        println!("loaded {:<16} subscribed to {:?}", p.name, p.subscriptions);
    }

    // A native handler reacting to a plugin's follow-up event.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    bus.once("budget_exceeded", move |e| {
        println!(
            "  [agent] budget exceeded ({} USD spent): stopping after this step",
            e.payload()["spent_usd"]
        );
        flag.store(true, Ordering::SeqCst);
    })?;
    bus.on("tool.**", |e| {
        println!("  [agent] tool event {} {}", e.name(), e.payload()["tool"])
    })?;

    let run = "run-7";
    bus.publish(Event::new("agent.run_started", json!({ "task": "triage the inbox" })).with_correlation_id(run));
    for step in 1..=10 {
        println!("step {step}");
        let cost = 0.004 * step as f64;
        let report = bus
            .publish_and_wait(
                Event::new(
                    "model_responded",
                    json!({
                        "model": "gpt-4.1",
                        "usage": { "prompt_tokens": 900 * step, "completion_tokens": 120 * step },
                        "cost_usd": cost,
                    }),
                )
                .with_correlation_id(run),
            )
            .await;
        let handled: Vec<String> = report
            .deliveries
            .iter()
            .map(|d| format!("{}={:?}", d.handler, d.outcome))
            .collect();
        println!("  model_responded delivered to: {}", handled.join(", "));
        bus.publish(Event::new("tool.called", json!({ "tool": "search", "step": step })).with_correlation_id(run));
        // The fixture plugin (if present) spins on this event; the agent does not notice.
        bus.publish(Event::new("misbehave.spin", json!({})).with_correlation_id(run));
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    bus.publish(Event::new("agent.run_finished", json!({ "stopped_by": "budget" })).with_correlation_id(run));
    bus.flush().await;

    println!("\nplugin          delivered  ok  errors  failures  restarts");
    for p in bus.plugins() {
        let s = p.stats;
        println!(
            "{:<15} {:>9} {:>3} {:>7} {:>9} {:>9}",
            p.name,
            s.delivered,
            s.ok,
            s.errors,
            s.failures.total(),
            s.restarts
        );
    }
    println!("{} events in history", bus.history(usize::MAX).len());
    bus.shutdown().await;
    Ok(())
}
