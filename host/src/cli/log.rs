//! `plugbus log stats|show|tail`: read an event log directory, also while a
//! bus is writing it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use plugbus::{LogReader, LogStats, Pattern, Record};
use serde_json::json;

/// Which events to print.
#[derive(clap::Args, Clone)]
pub struct Filter {
    /// The log directory (as given to `--log`).
    #[arg(long = "log", value_name = "DIR")]
    pub dir: PathBuf,
    /// Start at this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    /// Only events whose name matches this pattern (`*` one segment, trailing `**` one or more).
    #[arg(long, value_name = "PATTERN")]
    pub name: Option<String>,
    /// Only events with this correlation id.
    #[arg(long, value_name = "ID")]
    pub correlation: Option<String>,
    /// One JSON object per line: seq, name, id, time_unix_nanos, correlation_id, source, payload.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum LogCommand {
    /// Check every frame and print counts, sequence range, time range and size.
    Stats {
        /// The log directory.
        #[arg(long = "log", value_name = "DIR")]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print logged events.
    Show(Filter),
    /// Print the last events, then follow the log as it grows (Ctrl-C stops).
    Tail {
        #[command(flatten)]
        filter: Filter,
        /// Without --from, start this many events before the end, counting only the events --name and
        /// --correlation match (0: print only the events appended from now on).
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u64,
    },
}

pub async fn log(command: LogCommand) -> anyhow::Result<ExitCode> {
    match command {
        LogCommand::Stats { dir, json } => stats(&dir, json),
        LogCommand::Show(filter) => {
            let matcher = Matcher::new(&filter)?;
            let mut out = std::io::stdout().lock();
            print_from(&filter.dir, filter.from.unwrap_or(0), &matcher, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Tail { filter, lines } => tail(&filter, lines).await,
    }
}

/// Fails naming `dir` when it is not a directory, or is a directory that
/// holds files but no event log (no segment, no `LOCK`: a path given by
/// mistake, which would otherwise read as a log with no events). An empty
/// directory is an empty log.
pub(super) fn check_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        // A file is not "no such directory".
        if dir.exists() {
            anyhow::bail!(
                "event log {}: not a directory (a log is a directory of segments)",
                dir.display()
            );
        }
        anyhow::bail!("event log {}: no such directory", dir.display());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("event log {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .collect::<Vec<_>>();
    let is_log = entries.iter().any(|name| {
        let name = Path::new(name);
        name == Path::new("LOCK") || name.extension().is_some_and(|ext| ext == "seg")
    });
    if !entries.is_empty() && !is_log {
        anyhow::bail!(
            "event log {}: not an event log (its {} entries hold no segment file `*.seg` and no LOCK); give the directory `--log` wrote",
            dir.display(),
            entries.len()
        );
    }
    Ok(())
}

fn stats(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    check_dir(dir)?;
    let s = LogStats::read(dir)?;
    // Plugins' outbound requests, journaled beside the log (docs/http.md).
    let journal = match std::fs::metadata(dir.join(plugbus::http::JOURNAL_FILE)) {
        Ok(meta) => Some((plugbus::http::RequestJournal::open_read_only(dir)?.len(), meta.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(anyhow::anyhow!(
                "{}: {e}",
                dir.join(plugbus::http::JOURNAL_FILE).display()
            ));
        }
    };
    if json {
        let mut value = serde_json::to_value(&s)?;
        if let (Some((records, bytes)), Some(map)) = (journal, value.as_object_mut()) {
            map.insert("request_journal".into(), json!({ "records": records, "bytes": bytes }));
        }
        outln!("{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("log       {}", plugbus::text::printable_path(&s.dir))?;
    outln!("segments  {} ({} bytes)", s.segments, s.bytes)?;
    outln!("events    {}", s.events)?;
    match (s.first_seq, s.last_seq) {
        (Some(first), Some(last)) => outln!("sequence  {first}..={last}")?,
        _ => outln!("sequence  (empty)")?,
    }
    if let (Some(first), Some(last)) = (s.first_time_unix_nanos, s.last_time_unix_nanos) {
        outln!("time      {} .. {}", rfc3339(first), rfc3339(last))?;
    }
    if s.gaps > 0 {
        outln!(
            "gaps      {} sequence numbers missing: events delivered live but not logged (each loss named by a plugbus.log.overflow event), or a segment file removed",
            s.gaps
        )?;
    }
    if let Some(torn) = &s.torn_tail {
        outln!(
            "torn tail {} bytes from byte {} of {} ({}): a write a crash cut short, never acknowledged; the next writer to open the log cuts them off",
            torn.bytes,
            torn.offset,
            plugbus::text::printable_path(&torn.path),
            torn.reason
        )?;
    }
    if let Some((records, bytes)) = journal {
        outln!("requests  {records} journaled ({bytes} bytes)")?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone)]
struct Matcher {
    name: Option<Pattern>,
    correlation: Option<String>,
    json: bool,
}

impl Matcher {
    fn new(filter: &Filter) -> anyhow::Result<Matcher> {
        check_dir(&filter.dir)?;
        let name = filter
            .name
            .as_deref()
            .map(Pattern::parse)
            .transpose()
            .context("--name")?;
        Ok(Matcher {
            name,
            correlation: filter.correlation.clone(),
            json: filter.json,
        })
    }

    fn matches(&self, r: &Record) -> bool {
        self.name.as_ref().is_none_or(|p| p.matches(&r.name))
            && self
                .correlation
                .as_deref()
                .is_none_or(|c| r.correlation_id.as_deref() == Some(c))
    }

    fn print(&self, r: &Record, out: &mut impl Write) -> std::io::Result<()> {
        if self.json {
            let line = json!({
                "seq": r.seq,
                "name": r.name,
                "id": r.id,
                "time_unix_nanos": r.time_unix_nanos,
                "correlation_id": r.correlation_id,
                "source": r.source,
                "payload": r.payload,
            });
            writeln!(out, "{line}")
        } else {
            let payload = r.payload.to_string();
            let payload = match payload.char_indices().nth(120) {
                Some((cut, _)) => format!("{}…", &payload[..cut]),
                None => payload,
            };
            writeln!(
                out,
                "{:>8}  {}  {:<28} {:<16} {:<14} {}",
                r.seq,
                rfc3339(r.time_unix_nanos),
                // From outside (a NATS message, a native or Python emitter:
                // the embedder's names are not validated): shown with
                // their control characters escaped.
                plugbus::text::printable(&r.name),
                plugbus::text::printable(&r.source),
                plugbus::text::printable(r.correlation_id.as_deref().unwrap_or("-")),
                payload
            )
        }
    }
}

/// Prints matching events from `from`; returns the last sequence number read.
fn print_from(dir: &Path, from: u64, m: &Matcher, out: &mut impl Write) -> anyhow::Result<Option<u64>> {
    let mut last = None;
    let mut reader = LogReader::open(dir, from)?;
    if let Some(id) = &m.correlation {
        reader = reader.correlation(id.clone());
    }
    for record in reader {
        let record = record?;
        last = Some(record.seq);
        if m.matches(&record) {
            match m.print(&record, out) {
                Ok(()) => {}
                // `plugbus log show | head`: stop quietly.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(last),
                Err(e) => return Err(e.into()),
            }
        }
    }
    out.flush()?;
    Ok(last)
}

/// Where `tail -n lines` starts: at the `lines`-th last event `m` matches
/// (every matching one when fewer match), or just past the end for 0.
/// Unfiltered, the end is read from the last segment only (checking the
/// whole log could take minutes on a large one); with `--correlation` the
/// segments' correlation index skips the others; with `--name` the log is
/// read through, as only that finds the last events of a name.
fn start_of_last(dir: &Path, m: &Matcher, lines: u64) -> anyhow::Result<u64> {
    let end = plugbus::log::last_seq(dir)?.unwrap_or(0);
    if lines == 0 {
        return Ok(end + 1);
    }
    if m.name.is_none() && m.correlation.is_none() {
        return Ok(end.saturating_sub(lines - 1).max(1));
    }
    let mut reader = LogReader::open(dir, 0)?;
    if let Some(id) = &m.correlation {
        reader = reader.correlation(id.clone());
    }
    let keep = usize::try_from(lines).unwrap_or(usize::MAX);
    let mut last = std::collections::VecDeque::new();
    for record in reader {
        let record = record?;
        if record.seq > end {
            break;
        }
        if m.matches(&record) {
            if last.len() == keep {
                last.pop_front();
            }
            last.push_back(record.seq);
        }
    }
    Ok(last.front().copied().unwrap_or(end + 1))
}

/// How often `tail` looks for new events.
const TAIL_POLL: Duration = Duration::from_millis(200);

async fn tail(filter: &Filter, lines: u64) -> anyhow::Result<ExitCode> {
    let matcher = Matcher::new(filter)?;
    let from = match filter.from {
        Some(from) => from,
        None => {
            let (dir, m) = (filter.dir.clone(), matcher.clone());
            tokio::task::spawn_blocking(move || start_of_last(&dir, &m, lines)).await??
        }
    };
    let mut next = from;
    loop {
        let dir = filter.dir.clone();
        let m = matcher.clone();
        let last =
            tokio::task::spawn_blocking(move || print_from(&dir, next, &m, &mut std::io::stdout().lock())).await??;
        if let Some(last) = last {
            next = last + 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(TAIL_POLL) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// `2026-12-01T21:03:44.123Z` from nanoseconds since the epoch (UTC).
pub fn rfc3339(nanos: u64) -> String {
    let secs = nanos / 1_000_000_000;
    let millis = (nanos / 1_000_000) % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_796_158_224_123_000_000), "2026-12-01T20:50:24.123Z");
    }
}
