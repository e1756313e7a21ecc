//! `plugbus run`: replay JSON Lines events through a plugin directory.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

use super::report::Report;
use super::{CacheArgs, LogArgs, ReportFormat};

/// The cap on a burst of events fed to the plugins (`Bus::pacer`). A file
/// arrives far faster than plugins run, and a plugin queue that overflows
/// drops events; feeding half a burst while the plugins still hold the
/// other half keeps the run lossless without leaving them idle.
const BATCH: usize = 512;

pub async fn run(
    plugins: &Path,
    format: ReportFormat,
    watch: bool,
    grace: std::time::Duration,
    input: &str,
    cache: &CacheArgs,
    log: &LogArgs,
) -> anyhow::Result<ExitCode> {
    let reader: Box<dyn AsyncBufRead + Unpin> = if input == "-" {
        Box::new(BufReader::new(tokio::io::stdin()))
    } else {
        let file = tokio::fs::File::open(input)
            .await
            .with_context(|| format!("cannot open events file {input}"))?;
        Box::new(BufReader::new(file))
    };
    let bus = super::open_bus(plugins, watch, cache, log, 0, false, false).await?;
    // Every plugin file refused (each named above): the events would reach
    // nothing, and a run that did nothing must not look like a success.
    // Watching, a fixed file may still come, so the run goes on.
    if !watch && bus.plugins().is_empty() && !bus.load_failures().is_empty() {
        bus.shutdown().await;
        anyhow::bail!(
            "no plugin in {} could be loaded (each refusal is above): nothing would handle the events",
            plugbus::text::printable_path(plugins)
        );
    }
    let mut report = Report::default();
    // Split on bytes, not text: a line that is not UTF-8 is that line's
    // error, reported with its number, and the run goes on.
    let mut lines = reader.split(b'\n');
    let mut lineno = 0u64;
    let mut interrupted = false;
    let mut read_error = false;
    let mut pacer = bus.pacer(BATCH);
    loop {
        let line = tokio::select! {
            line = lines.next_segment() => line,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("plugbus: interrupted; draining queues");
                interrupted = true;
                break;
            }
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                // What was read is handled and reported; the rest is not.
                eprintln!("plugbus: reading {input} after line {lineno}: {e}; the lines after it are not read");
                read_error = true;
                break;
            }
        };
        lineno += 1;
        let line = match String::from_utf8(line) {
            Ok(line) => line,
            Err(e) => {
                eprintln!(
                    "plugbus: {input}:{lineno}: not UTF-8 (byte {} of the line)",
                    e.utf8_error().valid_up_to() + 1
                );
                report.invalid_lines += 1;
                continue;
            }
        };
        let line = line.strip_suffix('\r').unwrap_or(&line);
        // A byte-order mark (Windows tools write one) opens the file, not the event.
        let line = if lineno == 1 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        match plugbus::parse_event_line(line) {
            Ok(event) => {
                bus.publish(event);
                report.events += 1;
                // With --watch, plugins come and go: the pacer follows.
                pacer.fed().await;
            }
            Err(e) => {
                eprintln!("plugbus: {input}:{lineno}: {e}");
                report.invalid_lines += 1;
            }
        }
    }
    // At the end of the input, let every queued event and every follow-up it
    // causes run (shutdown below refuses new events, follow-ups included).
    // When interrupted, only the grace-bounded drain of shutdown applies.
    if !interrupted {
        bus.flush().await;
    }
    // States as the run left them; counters after the queues drained.
    let states: std::collections::HashMap<String, plugbus::PluginState> =
        bus.plugins().into_iter().map(|p| (p.name, p.state)).collect();
    report.load_failures = bus.load_failures();
    let shutdown = bus.shutdown_with(grace).await;
    if shutdown.dropped > 0 {
        eprintln!("plugbus: grace period over: {} queued events dropped", shutdown.dropped);
    }
    report.plugins = shutdown.plugins;
    for p in &mut report.plugins {
        if let Some(state) = states.get(&p.name) {
            p.state = *state;
        }
    }
    match format {
        ReportFormat::Json => outln!("{}", serde_json::to_string_pretty(&report.to_json())?)?,
        ReportFormat::Text => out!("{}", report.to_text())?,
    }
    Ok(if read_error {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
