//! `plugbus replay`: feed an event log (or a NATS stream) into fresh
//! plugins and print what they emit.

use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use super::CacheArgs;

/// One line of the output: a follow-up and the event it followed, its
/// fields in the order they have always been written (by name).
#[derive(Serialize)]
struct Line<'a> {
    correlation_id: Option<&'a str>,
    id: &'a str,
    name: &'a str,
    parent_seq: u64,
    payload: plugbus::PayloadOut<'a>,
    source: &'a str,
    time_unix_nanos: u64,
}

pub struct Args<'a> {
    pub replay: plugbus::Replay,
    pub from: Option<u64>,
    pub correlation: Option<String>,
    pub only: Option<String>,
    pub emit: plugbus::ReplayEmit,
    pub live_requests: bool,
    pub cache: &'a CacheArgs,
}

pub async fn replay(args: Args<'_>) -> anyhow::Result<ExitCode> {
    let mut replay = args
        .replay
        .emit(args.emit)
        .live_requests(args.live_requests)
        .bus(args.cache.apply(plugbus::Bus::builder()));
    if let Some(from) = args.from {
        replay = replay.from(from);
    }
    if let Some(id) = args.correlation {
        replay = replay.correlation(id);
    }
    if let Some(name) = args.only {
        replay = replay.only(name);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut write_error = None;
    let report = replay
        .run(|parent_seq, event| {
            if write_error.is_some() {
                return;
            }
            let line = Line {
                correlation_id: event.correlation_id(),
                id: event.id(),
                name: event.name(),
                parent_seq,
                payload: event.payload_out(),
                source: event.source(),
                time_unix_nanos: event.time_unix_nanos(),
            };
            // Strings, numbers and JSON text: writing them fails only as
            // the output does.
            let written = serde_json::to_writer(&mut out, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = written {
                write_error = Some(e);
            }
        })
        .await?;
    // The output's last bytes are written by the flush: its error (a full
    // disk) is the run's too. A reader that went away (`| head`) is not.
    let flushed = match write_error {
        Some(e) => Err(e),
        None => out.flush(),
    };
    match flushed {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::new(e).context("writing the follow-ups to stdout"));
        }
        _ => {}
    }
    drop(out);
    eprintln!(
        "plugbus: replayed {} into {}; {}",
        super::units::counted(report.events, "event"),
        super::units::counted(report.plugins.len() as u64, "plugin"),
        super::units::counted(report.follow_ups, "follow-up")
    );
    if report.already_logged > 0 {
        eprintln!(
            "plugbus: {} of the follow-ups are in the log already (the live run logged them) and were not appended again",
            report.already_logged
        );
    }
    warn_missing(&report);
    if report.skipped > 0 {
        eprintln!(
            "plugbus: {} messages of the stream are not plugbus events; skipped",
            report.skipped
        );
    }
    for p in &report.plugins {
        if p.stats.dropped > 0 {
            eprintln!(
                "plugbus: {}: {} events dropped during the replay (its queue was full): what it rebuilt is incomplete",
                p.name, p.stats.dropped
            );
        }
        let f = p.stats.failures.total();
        if f > 0 || p.stats.errors > 0 {
            eprintln!(
                "plugbus: {}: {} errors, {} failures during the replay ({})",
                p.name,
                p.stats.errors,
                f,
                p.stats.last_error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Warns when the log missed events between those replayed
/// ([`plugbus::ReplayReport::missing`]): what was rebuilt lacks them.
pub(super) fn warn_missing(report: &plugbus::ReplayReport) {
    if let Some((low, high)) = report.missing_range {
        eprintln!(
            "plugbus: warning: the log misses {} events numbered between {low} and {high} (delivered live but not logged, \
             named by plugbus.log.overflow events, or a segment file removed): what the replay rebuilt does not hold them",
            report.missing
        );
    }
}
