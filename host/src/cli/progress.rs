//! A spinner on the terminal while a plugin compiles: cold compiles of
//! interpreted plugins take seconds. Driven by the library's `compile`
//! tracing span, so the library knows nothing about terminals.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tracing::span::{Attributes, Id};
use tracing::{Subscriber, field};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

#[derive(Default)]
pub struct CompileSpinner {
    bars: Mutex<HashMap<Id, ProgressBar>>,
}

struct PluginField(String);

impl field::Visit for PluginField {
    fn record_debug(&mut self, f: &field::Field, value: &dyn std::fmt::Debug) {
        if f.name() == "plugin" {
            self.0 = format!("{value:?}").trim_matches('"').to_owned();
        }
    }
}

impl<S: Subscriber> Layer<S> for CompileSpinner {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() != "compile" {
            return;
        }
        let mut plugin = PluginField(String::new());
        attrs.record(&mut plugin);
        let bar = ProgressBar::new_spinner().with_message(format!("compiling {}", plugin.0));
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), bar);
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some(bar) = self.bars.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
            bar.finish_and_clear();
        }
    }
}
