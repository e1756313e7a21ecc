//! Replay: feeding logged events into freshly instantiated plugins, to
//! rebuild a read model, check a fixed plugin against history, or see what
//! a plugin would have emitted.
//!
//! The history is an event log directory ([`Replay::new`]) or, with the
//! `nats` feature, a NATS JetStream stream ([`Replay::nats`]), read through
//! an ephemeral ordered consumer that leaves the plugins' durable consumers
//! alone. Events are fed in log (or stream) order with their original
//! sequence numbers (the stream's), ids and times; with deterministic execution (see `determinism`) a plugin
//! replayed twice produces the same follow-ups, byte for byte, and the same
//! ones it produced live (when it saw the same events from a fresh start).
//! Follow-ups are, by [`ReplayEmit`]:
//! - `capture` (default): handed to the caller, ordered by (parent sequence
//!   number, plugin, emit index), never published: the logged events already
//!   include the follow-ups the plugins emitted live, and they are fed too;
//! - `discard`: dropped;
//! - `publish`: published on the replay bus and appended to the log (their
//!   ids are derived from their parent, so a consumer can de-duplicate).
//!   Not from a stream: the live hosts would take them from it as new
//!   events once the stream's duplicate window (2 minutes) has passed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), plugbus::ReplayError> {
//! let report = plugbus::Replay::new("plugins/dist", "agent-log")
//!     .only("cost-tracker")
//!     .run(|parent_seq, follow_up| println!("{parent_seq}: {}", follow_up.name()))
//!     .await?;
//! println!("{} events replayed", report.events);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::bus::Bus;
use crate::bus::builder::{BusBuilder, ReplayJournal};
use crate::error::Error;
use crate::event::Event;
use crate::log::{LogError, LogReader};
use crate::plugin::port::{Captured, FollowUps, Republish};
use crate::plugin::{LoadError, PluginInfo};
use crate::query::{QueryAnswer, QueryError};

/// What becomes of the follow-ups plugins emit during a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayEmit {
    /// Handed to the caller in a deterministic order; never published.
    #[default]
    Capture,
    /// Dropped.
    Discard,
    /// Published and appended to the log.
    Publish,
}

impl FromStr for ReplayEmit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "capture" => Ok(ReplayEmit::Capture),
            "discard" => Ok(ReplayEmit::Discard),
            "publish" => Ok(ReplayEmit::Publish),
            other => Err(format!("unknown emit mode `{other}` (capture, discard or publish)")),
        }
    }
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The replay bus could not be built.
    #[error(transparent)]
    Bus(#[from] Error),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] LoadError),
    /// The NATS server or stream could not be read.
    #[cfg(feature = "nats")]
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsError),
    /// The replay's settings do not go together.
    #[error("{0}")]
    Settings(String),
    /// The plugin directory could not be read, or holds no such plugin.
    #[error("{}: {reason}", path.display())]
    Plugins {
        /// The plugin directory or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Logged events fed to the plugins.
    pub events: u64,
    /// Follow-ups the plugins emitted (captured, discarded or published,
    /// as `--emit` says; with `publish`, those the log held already too).
    pub follow_ups: u64,
    /// With [`ReplayEmit::Publish`]: follow-ups not published because the
    /// log holds them already (the live run logged them: the same id);
    /// `follow_ups` less these were appended.
    pub already_logged: u64,
    /// Stream messages that are not plugbus events (logged and skipped);
    /// always 0 for a log.
    pub skipped: u64,
    /// The plugins, with their counters for the replay.
    pub plugins: Vec<PluginInfo>,
    /// Sequence numbers absent between the first and the last event
    /// replayed from a log (no correlation filter): events delivered live
    /// but not logged (each loss is named by a `plugbus.log.overflow`
    /// event), or a segment file removed or cut short by hand. The replay
    /// does not hold them, so what it rebuilds may differ from the live
    /// run's. 0 for a NATS stream.
    pub missing: u64,
    /// The lowest and the highest of the [`missing`](Self::missing) numbers.
    pub missing_range: Option<(u64, u64)>,
}

/// Sequence numbers absent between consecutive events fed (see
/// [`ReplayReport::missing`]).
#[derive(Debug, Default, Clone, Copy)]
struct Missing {
    count: u64,
    range: Option<(u64, u64)>,
    last_seen: Option<u64>,
}

impl Missing {
    /// Notes the event numbered `seq`, fed after the last one seen.
    fn saw(&mut self, seq: u64) {
        if let Some(prev) = self.last_seen
            && seq > prev + 1
        {
            self.count += seq - prev - 1;
            let low = self.range.map_or(prev + 1, |(low, _)| low);
            self.range = Some((low, seq - 1));
        }
        self.last_seen = Some(seq);
    }
}

/// A replay of a log directory into the plugins of a directory.
#[must_use]
pub struct Replay {
    plugins: PathBuf,
    source: Source,
    from: u64,
    correlation: Option<String>,
    only: Option<String>,
    emit: ReplayEmit,
    live_requests: bool,
    bus: BusBuilder,
}

/// Where the replayed events come from.
enum Source {
    Log(PathBuf),
    #[cfg(feature = "nats")]
    Nats(crate::nats::NatsOptions),
}

/// Events read from the log (or stream) at a time, and the cap on the
/// burst fed to the plugins ([`Bus::pacer`]): with the default queue of
/// 1024 the burst is 512 (half the smallest queue), fed 256 at a time
/// while the plugins still hold up to 256, so no queue overflows, there is
/// room for follow-ups, and the plugins' workers never idle waiting for
/// the feed.
const BATCH: usize = 1024;

/// Captured follow-ups held for ordering before the replay waits for the
/// plugins to finish everything fed (the only point where every follow-up
/// of what was fed is known, so they can be handed on in log order). At a
/// few hundred bytes each, this many keeps a few MiB, and the wait comes
/// once per this many follow-ups instead of once per window.
const HELD_FOLLOW_UPS: usize = 8192;

/// Events fed at most before held follow-ups are handed on, however few:
/// `plugbus replay` prints as it goes (about ten times a second at this
/// machine's replay rate) instead of at the end of a long log.
const HAND_ON_EVERY: u64 = 65_536;

impl Replay {
    /// Replays the log in `log` into every plugin of `plugins`.
    pub fn new(plugins: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Replay {
        Replay::of(plugins.into(), Source::Log(log.into()))
    }

    /// Replays the NATS JetStream stream of `nats` (its URL and stream
    /// name; the rest of the options is not used) into every plugin of
    /// `plugins`. Sequence numbers are the stream's.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), plugbus::ReplayError> {
    /// let nats = plugbus::NatsOptions::new("nats://127.0.0.1:4222");
    /// let report = plugbus::Replay::nats("plugins/dist", nats).only("cost-tracker").run(|_, _| {}).await?;
    /// println!("{} events replayed from the stream", report.events);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "nats")]
    pub fn nats(plugins: impl Into<PathBuf>, nats: crate::nats::NatsOptions) -> Replay {
        Replay::of(plugins.into(), Source::Nats(nats))
    }

    fn of(plugins: PathBuf, source: Source) -> Replay {
        Replay {
            plugins,
            source,
            from: 0,
            correlation: None,
            only: None,
            emit: ReplayEmit::Capture,
            live_requests: false,
            bus: BusBuilder::new(),
        }
    }

    /// Starts at sequence number `seq`.
    pub fn from(mut self, seq: u64) -> Self {
        self.from = seq;
        self
    }

    /// Feeds only the events of this correlation id.
    pub fn correlation(mut self, id: impl Into<String>) -> Self {
        self.correlation = Some(id.into());
        self
    }

    /// Replays into this plugin only (`<plugins>/<name>.wasm`).
    pub fn only(mut self, name: impl Into<String>) -> Self {
        self.only = Some(name.into());
        self
    }

    /// What becomes of follow-ups.
    pub fn emit(mut self, emit: ReplayEmit) -> Self {
        self.emit = emit;
        self
    }

    /// Sends the plugins' outbound requests that the live run's request
    /// journal has no answer for (by default they are refused: a replay
    /// never repeats a side effect). Only with [`ReplayEmit::Publish`]:
    /// the replay then acts like a live run. Requests the journal answers
    /// are never sent again either way.
    pub fn live_requests(mut self, live: bool) -> Self {
        self.live_requests = live;
        self
    }

    /// The bus settings (limits, cache) to replay with. Its plugin
    /// directory, watching, log and NATS settings are ignored.
    pub fn bus(mut self, builder: BusBuilder) -> Self {
        self.bus = builder;
        self
    }

    /// Runs the replay. `on_follow_up(parent_seq, event)` gets each captured
    /// follow-up ([`ReplayEmit::Capture`] only), in order.
    ///
    /// # Errors
    /// [`ReplayError`] naming the log file (or the NATS server or stream),
    /// the plugin or the directory; [`ReplayError::Settings`] for
    /// [`ReplayEmit::Publish`] from a stream.
    pub async fn run(self, on_follow_up: impl FnMut(u64, &Event)) -> Result<ReplayReport, ReplayError> {
        Ok(self.run_then(on_follow_up, None).await?.0)
    }

    /// Rebuilds the read model of the plugin named by [`only`](Self::only)
    /// from the log (a fresh instance, every logged event from
    /// [`from`](Self::from), follow-ups discarded), then asks it `request`:
    /// the "fix the projection, rebuild it from history" workflow.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let (report, answer) = plugbus::Replay::new("plugins/dist", "agent-log")
    ///     .only("agent-runs")
    ///     .query(r#"{"agents": true}"#)
    ///     .await?;
    /// println!("{} events: {}", report.events, answer?.answer.get());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ReplayError`] when the replay cannot run (no plugin named with
    /// `only`, an unreadable log or plugin); the query's own outcome is the
    /// inner `Result`.
    pub async fn query(
        mut self,
        request: &str,
    ) -> Result<(ReplayReport, Result<QueryAnswer, QueryError>), ReplayError> {
        let Some(name) = self.only.clone() else {
            return Err(ReplayError::Plugins {
                path: self.plugins.clone(),
                reason: "a query rebuilds one plugin: name it with `only`".into(),
            });
        };
        self.emit = ReplayEmit::Discard;
        let (report, answer) = self.run_then(|_, _| {}, Some((&name, request))).await?;
        // `run_then` answers whenever it is given a query.
        let answer = answer.unwrap_or(Err(QueryError::UnknownPlugin(name)));
        Ok((report, answer))
    }

    /// The replay, then (with `query`) one query to a plugin before the
    /// replay bus shuts down.
    async fn run_then(
        self,
        mut on_follow_up: impl FnMut(u64, &Event),
        query: Option<(&str, &str)>,
    ) -> Result<(ReplayReport, Option<Result<QueryAnswer, QueryError>>), ReplayError> {
        let files = self.plugin_files()?;
        let mut builder = self.bus.watch(false);
        builder.clear_plugin_dir();
        builder.clear_log_dir();
        // Fresh instances, whatever `--emit` says: the live plugins'
        // snapshots and dead letters are never read or written by a replay.
        builder.keep_plugin_state = false;
        if self.live_requests && self.emit != ReplayEmit::Publish {
            return Err(ReplayError::Settings(
                "live requests (--live-requests) need --emit publish: a replay that only prints \
                 what the plugins emit must not act on the world"
                    .into(),
            ));
        }
        // Plugins' requests are answered from the live run's journal.
        let journal = match &self.source {
            Source::Log(log) => ReplayJournal::Log(log.clone()),
            #[cfg(feature = "nats")]
            Source::Nats(options) => ReplayJournal::Opened(crate::nats::replay_journal(options).await?),
        };
        builder.replay_requests = Some((journal, self.live_requests));
        // The replay bus is local: on NATS it would publish what it replays.
        #[cfg(feature = "nats")]
        {
            builder.nats = None;
        }
        // Read the end first: in `publish` mode the log grows as we go.
        let mut logged_follow_ups = None;
        let mut batches = match &self.source {
            Source::Log(log) => {
                if self.emit == ReplayEmit::Publish {
                    builder = builder.log_dir(log);
                }
                let path = log.clone();
                let end = tokio::task::spawn_blocking(move || crate::log::last_seq(&path))
                    .await
                    .map_err(|e| Error::Engine(format!("log reader task failed: {e}")))??
                    .unwrap_or(0);
                if self.emit == ReplayEmit::Publish {
                    let (path, from) = (log.clone(), self.from);
                    let ids = tokio::task::spawn_blocking(move || logged_follow_up_ids(&path, from, end))
                        .await
                        .map_err(|e| Error::Engine(format!("log reader task failed: {e}")))??;
                    logged_follow_ups = Some(ids);
                }
                Batches::Log(spawn_reader(log.clone(), self.from, end, self.correlation.clone()))
            }
            #[cfg(feature = "nats")]
            Source::Nats(options) => {
                if self.emit == ReplayEmit::Publish {
                    return Err(ReplayError::Settings(format!(
                        "follow-ups replayed from NATS stream `{}` cannot be published: the live hosts \
                         would take them from the stream as new events once its duplicate window has \
                         passed; capture them (the default) or discard them",
                        options.stream
                    )));
                }
                Batches::Nats(crate::nats::reader::read(options, self.from, BATCH).await?)
            }
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let discarded = Arc::new(AtomicU64::new(0));
        let republish = Arc::new(Republish {
            logged: logged_follow_ups.unwrap_or_default(),
            ..Republish::default()
        });
        builder.follow_ups = match self.emit {
            ReplayEmit::Capture => FollowUps::Capture(tx),
            ReplayEmit::Discard => FollowUps::Discard(discarded.clone()),
            ReplayEmit::Publish => FollowUps::Republish(republish.clone()),
        };
        let bus = builder.build().await?;
        // Every plugin the replay was asked for, or none: a replay without
        // one of them rebuilds something else than the live run. Each file
        // that fails is named, not only the first.
        let mut failed = Vec::new();
        for file in &files {
            if let Err(e) = bus.load_plugin(file).await {
                failed.push(e);
            }
        }
        if !failed.is_empty() {
            bus.shutdown().await;
            if failed.len() == 1 {
                return Err(ReplayError::Plugin(failed.remove(0)));
            }
            let reasons: Vec<String> = failed.iter().map(ToString::to_string).collect();
            return Err(ReplayError::Plugins {
                path: self.plugins.clone(),
                reason: format!(
                    "{} plugins could not be loaded, and a replay runs all of them or none (--only NAME picks one): {}",
                    failed.len(),
                    reasons.join("; ")
                ),
            });
        }
        let result = feed(&bus, &mut batches, self.correlation.as_deref(), &rx, &mut on_follow_up).await;
        let answer = match (&result, query) {
            (Ok(_), Some((plugin, request))) => Some(bus.query(plugin, request).await),
            _ => None,
        };
        let shutdown = bus.shutdown().await;
        let (events, captured, missing) = result?;
        let published = republish.published.load(Ordering::Relaxed);
        let already_logged = republish.already_logged.load(Ordering::Relaxed);
        Ok((
            ReplayReport {
                events,
                follow_ups: captured + discarded.load(Ordering::Relaxed) + published + already_logged,
                already_logged,
                skipped: batches.skipped(),
                plugins: shutdown.plugins,
                missing: missing.count,
                missing_range: missing.range,
            },
            answer,
        ))
    }

    fn plugin_files(&self) -> Result<Vec<PathBuf>, ReplayError> {
        let err = |path: &Path, reason: String| ReplayError::Plugins {
            path: path.to_owned(),
            reason,
        };
        if !self.plugins.is_dir() {
            let why = if self.plugins.exists() {
                "not a directory"
            } else {
                "no such directory"
            };
            return Err(err(&self.plugins, format!("plugin directory: {why}")));
        }
        if let Some(name) = &self.only {
            // A name, not a path: `../elsewhere/x` would load a plugin from
            // outside the directory asked for.
            if !crate::plugin::valid_plugin_name(name) {
                return Err(err(
                    &self.plugins,
                    format!("`{name}` is not a plugin name (the file name in the directory, without `.wasm`)"),
                ));
            }
            let file = self.plugins.join(format!("{name}.wasm"));
            if !file.is_file() {
                return Err(err(&file, format!("no plugin named `{name}`")));
            }
            return Ok(vec![file]);
        }
        let files = crate::bus::builder::wasm_files(&self.plugins).map_err(|e| err(&self.plugins, e.to_string()))?;
        if files.is_empty() {
            return Err(err(&self.plugins, "no *.wasm plugins".into()));
        }
        Ok(files)
    }
}

/// The replayed events, in batches.
enum Batches {
    Log(tokio::sync::mpsc::Receiver<Result<Vec<Event>, LogError>>),
    #[cfg(feature = "nats")]
    Nats(crate::nats::reader::StreamReader),
}

impl Batches {
    async fn next(&mut self) -> Option<Result<Vec<Event>, ReplayError>> {
        match self {
            Batches::Log(rx) => Some(rx.recv().await?.map_err(ReplayError::from)),
            #[cfg(feature = "nats")]
            Batches::Nats(reader) => Some(reader.batches.recv().await?.map_err(ReplayError::from)),
        }
    }

    fn skipped(&self) -> u64 {
        match self {
            Batches::Log(_) => 0,
            #[cfg(feature = "nats")]
            Batches::Nats(reader) => reader.skipped.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The ids of the follow-ups (depth above 0) in the log in `dir` from
/// `from` to `end`: what a replay publishing its follow-ups must not append
/// again. Every follow-up of an event replayed comes after it in the log,
/// so none before `from` can be one.
///
/// # Errors
/// The reader's [`LogError`].
fn logged_follow_up_ids(dir: &Path, from: u64, end: u64) -> Result<std::collections::HashSet<String>, LogError> {
    let mut reader = LogReader::open(dir, from)?;
    let mut ids = std::collections::HashSet::new();
    while let Some(event) = reader.next_event() {
        let event = event?;
        if event.seq().unwrap_or(0) > end {
            break;
        }
        if event.depth() > 0 {
            ids.insert(event.id().to_owned());
        }
    }
    Ok(ids)
}

/// Reads `[from, end]` of the log on a thread of its own, in batches.
fn spawn_reader(
    log: PathBuf,
    from: u64,
    end: u64,
    correlation: Option<String>,
) -> tokio::sync::mpsc::Receiver<Result<Vec<Event>, LogError>> {
    // Four batches ahead: reading stays ahead of the plugins with bounded memory.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let mut reader = match LogReader::open(&log, from) {
            Ok(r) => match correlation {
                Some(id) => r.correlation(id),
                None => r,
            },
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(event) = reader.next_event() {
            match event {
                Ok(e) if e.seq().unwrap_or(0) > end => break,
                Ok(e) => {
                    batch.push(e);
                    if batch.len() == BATCH && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
    });
    rx
}

async fn feed(
    bus: &Bus,
    batches: &mut Batches,
    correlation: Option<&str>,
    captured: &std::sync::mpsc::Receiver<Captured>,
    on_follow_up: &mut impl FnMut(u64, &Event),
) -> Result<(u64, u64, Missing), ReplayError> {
    // Never more than the smallest plugin queue holds: a replay drops
    // nothing, and the plugins never wait for the feed.
    let mut pacer = bus.pacer(BATCH);
    let (mut events, mut follow_ups) = (0u64, 0u64);
    let mut order = Vec::new();
    let mut since_settle = 0u64;
    let mut missing = Missing::default();
    // Gaps between the events of one correlation id are its others'; a
    // stream's numbers have gaps of their own (other subjects, deleted
    // messages): counted for a whole log only.
    let count_gaps = correlation.is_none() && matches!(batches, Batches::Log(_));
    while let Some(batch) = batches.next().await {
        for event in batch? {
            if correlation.is_some_and(|c| event.correlation_id() != Some(c)) {
                continue;
            }
            if count_gaps && let Some(seq) = event.seq() {
                missing.saw(seq);
            }
            bus.shared.publish_replayed(&event);
            events += 1;
            since_settle += 1;
            if pacer.fed().await {
                order.extend(captured.try_iter());
                if order.len() >= HELD_FOLLOW_UPS || (!order.is_empty() && since_settle >= HAND_ON_EVERY) {
                    settle(bus, captured, &mut order, &mut follow_ups, on_follow_up).await;
                    since_settle = 0;
                }
            }
        }
    }
    settle(bus, captured, &mut order, &mut follow_ups, on_follow_up).await;
    Ok((events, follow_ups, missing))
}

/// Waits until the plugins have handled everything fed, then hands the
/// follow-ups captured since the last settle to `on_follow_up` in order:
/// by the event they follow, then plugin, then their place among that
/// plugin's follow-ups of it.
async fn settle(
    bus: &Bus,
    captured: &std::sync::mpsc::Receiver<Captured>,
    order: &mut Vec<Captured>,
    follow_ups: &mut u64,
    on_follow_up: &mut impl FnMut(u64, &Event),
) {
    bus.flush().await;
    order.extend(captured.try_iter());
    order.sort_by(|a, b| (a.parent_seq, &a.plugin, a.index).cmp(&(b.parent_seq, &b.plugin, b.index)));
    for c in order.drain(..) {
        *follow_ups += 1;
        on_follow_up(c.parent_seq, &c.event);
    }
}
