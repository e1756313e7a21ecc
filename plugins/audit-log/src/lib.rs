//! audit-log: appends every event as one JSON line to a file in the
//! directory its manifest grants (`/audit` by default; the file name can be
//! set with `[config] file = "events.jsonl"`).

use std::fs::{File, OpenOptions};
use std::io::Write;

use plugbus_guest::{Event, Plugin, export_plugin};
use serde::Serialize;
use serde_json::value::RawValue;

#[derive(Default)]
struct AuditLog {
    file: Option<File>,
}

#[derive(Serialize)]
struct Line<'a> {
    name: &'a str,
    id: &'a str,
    time_unix_nanos: u64,
    correlation_id: Option<&'a str>,
    source: &'a str,
    payload: &'a RawValue,
}

impl AuditLog {
    fn file(&mut self) -> Result<&mut File, plugbus_guest::Error> {
        if self.file.is_none() {
            let name = plugbus_guest::config("file").unwrap_or_else(|| "events.jsonl".into());
            let path = format!("/audit/{name}");
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open {path} (is /audit granted in the manifest?): {e}"))?;
            self.file = Some(file);
        }
        // Just set above when it was empty.
        Ok(self.file.as_mut().expect("file opened"))
    }
}

impl Plugin for AuditLog {
    fn subscriptions(&self) -> Vec<String> {
        vec!["*".into()]
    }

    fn on_event(&mut self, event: &Event) -> plugbus_guest::Result {
        let payload: &RawValue = serde_json::from_str(&event.payload)?;
        let mut line = serde_json::to_vec(&Line {
            name: &event.name,
            id: &event.id,
            time_unix_nanos: event.time_unix_nanos,
            correlation_id: event.correlation_id.as_deref(),
            source: &event.source,
            payload,
        })?;
        line.push(b'\n');
        let file = self.file()?;
        if let Err(e) = file.write_all(&line) {
            self.file = None; // reopen on the next event
            return Err(e.into());
        }
        Ok(())
    }
}

export_plugin!(AuditLog);
