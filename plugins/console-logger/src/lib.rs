//! console-logger: logs every event on one compact line.

use plugbus_guest::{Event, Plugin, export_plugin, info};

/// Payload characters shown per line; the rest is elided.
const PAYLOAD_PREVIEW: usize = 120;

#[derive(Default)]
struct ConsoleLogger {
    seen: u64,
}

impl Plugin for ConsoleLogger {
    fn subscriptions(&self) -> Vec<String> {
        vec!["*".into()]
    }

    fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
        self.seen += 1;
        let mut preview: String = event.payload.chars().take(PAYLOAD_PREVIEW).collect();
        if preview.len() < event.payload.len() {
            preview.push('…');
        }
        let corr = event.correlation_id.as_deref().unwrap_or("-");
        info!(
            "#{} {} from={} corr={corr} {preview}",
            self.seen, event.name, event.source
        );
        Ok(())
    }
}

export_plugin!(ConsoleLogger);
