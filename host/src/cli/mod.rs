//! Argument parsing and the subcommands.

/// `print!` that returns the write's error instead of panicking: a full
/// disk or a closed file descriptor behind stdout is the command's error
/// (exit 1, named), not a panic with a backtrace. A reader that went away
/// (`plugbus log stats | head -1`) is not an error: the rest is dropped.
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut stdout = ::std::io::stdout().lock();
        $crate::cli::stdout_result(
            ::std::io::Write::write_fmt(&mut stdout, format_args!($($arg)*))
                .and_then(|()| ::std::io::Write::flush(&mut stdout)),
        )
    }};
}

/// `println!` as [`out!`] is `print!`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let mut stdout = ::std::io::stdout().lock();
        $crate::cli::stdout_result(
            ::std::io::Write::write_fmt(&mut stdout, format_args!($($arg)*))
                .and_then(|()| ::std::io::Write::write_all(&mut stdout, b"\n"))
                .and_then(|()| ::std::io::Write::flush(&mut stdout)),
        )
    }};
}

/// A write to stdout's outcome as the command's: see [`out!`].
///
/// # Errors
/// The write's error, named, unless the reader went away.
fn stdout_result(written: std::io::Result<()>) -> anyhow::Result<()> {
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("writing to stdout")),
        _ => Ok(()),
    }
}

mod bench;
mod check;
mod dashboard;
mod dlq;
mod fleet;
mod http_server;
mod log;
pub mod logging;
mod new;
mod oci;
mod progress;
mod query;
mod replay;
mod report;
mod run;
mod same_origin;
mod serve;
mod sign;
mod units;
mod wit;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// plugbus: an event bus whose observers are sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    /// Only warnings and errors on stderr (RUST_LOG overrides).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Debug logging on stderr (RUST_LOG overrides).
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Emit JSON Lines events from FILE (or stdin) through the plugins in DIR,
    /// then print a per-plugin report.
    Run {
        /// Directory of `*.wasm` plugins (with optional `<name>.toml` manifests).
        #[arg(long, value_name = "DIR")]
        plugins: PathBuf,
        /// Report format.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        report: ReportFormat,
        /// Keep watching DIR while events are read: plugins added, replaced or
        /// removed there are loaded, hot-swapped or unloaded.
        #[arg(long)]
        watch: bool,
        /// At the end (or on Ctrl-C), how long plugins may take to drain their queues.
        #[arg(long, value_name = "MS", default_value_t = 10_000)]
        grace_ms: u64,
        /// Events, one JSON object per line: {"name", "payload", "correlation_id"}. `-` for stdin.
        #[arg(value_name = "FILE", default_value = "-")]
        input: String,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Serve a plugin directory over HTTP for agents in any language:
    /// POST /events, GET /plugins, GET /metrics. The directory is watched.
    Serve {
        /// Directory of `*.wasm` plugins (with optional manifests); watched for changes.
        #[arg(long, value_name = "DIR")]
        plugins: PathBuf,
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
        listen: std::net::SocketAddr,
        /// On SIGINT/SIGTERM, how long plugins may take to drain their queues.
        #[arg(long, value_name = "MS", default_value_t = 10_000)]
        grace_ms: u64,
        /// How long a client may take to send a request's head, or leave its body waiting for
        /// the next part (and a kept-alive connection stay idle); past it the connection is closed.
        #[arg(long, value_name = "MS", default_value_t = http_server::DEFAULT_CLIENT_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
        client_timeout_ms: u64,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        otlp: OtlpArgs,
        /// Without --log: the last N events kept in memory, where the dashboard's run
        /// timelines (GET /runs/ID/events) read them from (0: none). With --log the log is read.
        #[arg(long, value_name = "N", default_value_t = serve::DEFAULT_HISTORY)]
        history: usize,
        /// A host name the API answers to besides IP addresses and localhost (repeatable). A host
        /// on loopback refuses other names (DNS rebinding); on another address, listing names
        /// makes it refuse the rest.
        #[arg(long = "allow-host", value_name = "NAME", value_parser = same_origin::allowed_host)]
        allow_hosts: Vec<String>,
        #[command(flatten)]
        fleet: fleet::FleetArgs,
    },
    /// One plugin set for a NATS fleet: publish a version, remove a plugin, see what each host runs.
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// Dead letters (events that made a plugin fail hard): list, redrive.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Feed a log's (or a NATS stream's) events into fresh instances of the plugins in DIR
    /// and print the follow-ups they emit, as JSON Lines (deterministic: twice gives the same bytes).
    Replay {
        /// Directory of `*.wasm` plugins (with optional manifests).
        #[arg(long, value_name = "DIR")]
        plugins: PathBuf,
        #[command(flatten)]
        history: HistoryArgs,
        /// Start at this sequence number (the stream's, with --nats).
        #[arg(long, value_name = "SEQ", conflicts_with = "correlation")]
        from: Option<u64>,
        /// Only the events of this correlation id.
        #[arg(long, value_name = "ID")]
        correlation: Option<String>,
        /// Only this plugin (`DIR/NAME.wasm`).
        #[arg(long, value_name = "NAME")]
        only: Option<String>,
        /// Follow-ups: capture (print, never publish), discard, or publish (append to the log; not with --nats).
        #[arg(long, value_name = "MODE", default_value = "capture")]
        emit: plugbus::ReplayEmit,
        /// Send plugins' requests the live run's request journal has no answer
        /// for (default: refused; a replay never repeats a side effect). Needs --emit publish.
        #[arg(long)]
        live_requests: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Rebuild a plugin's read model from an event log or a NATS stream (a fresh
    /// instance, every event) and ask it REQUEST; prints {"as_of_seq", "answer"}.
    Query {
        /// Directory of `*.wasm` plugins (with optional manifests).
        #[arg(long, value_name = "DIR")]
        plugins: PathBuf,
        #[command(flatten)]
        history: HistoryArgs,
        /// The plugin (`DIR/NAME.wasm`); it must export `query`.
        #[arg(value_name = "NAME")]
        name: String,
        /// The query, JSON text (e.g. '{"run": "run-42"}').
        #[arg(value_name = "REQUEST")]
        request: String,
        /// Indent the JSON for reading.
        #[arg(long)]
        pretty: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Read an event log: `stats`, `show`, `tail`.
    Log {
        #[command(subcommand)]
        command: log::LogCommand,
    },
    /// Measure plugbus side by side with its baselines (mpsc floor, native
    /// handler, no runaway, warm cache) and print ratios.
    Bench {
        /// Directory holding the built token-counter.wasm and misbehave.wasm.
        #[arg(long, value_name = "DIR", default_value = "plugins/dist")]
        plugins: PathBuf,
        /// Directory holding the per-language fixtures (tokens-c, tokens-py, tokens-js).
        #[arg(long, value_name = "DIR", default_value = "target/plugbus-test-wasm")]
        fixtures: PathBuf,
        /// Events per scenario.
        #[arg(long, default_value_t = 20_000)]
        events: u64,
        /// Only the scenarios with these numbers (and those measured with them), e.g. `--only 5,6`.
        #[arg(long, value_delimiter = ',', value_name = "N,...", value_parser = clap::value_parser!(u32).range(1..=18))]
        only: Vec<u32>,
        /// Also write the results as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Scaffold a new plugin that builds as-is: a folder with the code, a
    /// manifest, a README and a test event file.
    New {
        /// The plugin's name (lowercase letters, digits, `-`, `_`).
        name: String,
        /// Language of the plugin.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// Where to create it (default: ./NAME).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Rust only: path to the plugbus-guest SDK (default: this checkout's, else the published crate).
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Print the WIT package plugins implement (`plugbus:observer`), or write
    /// it into DIR for a toolchain that reads WIT (componentize-py, componentize-qjs).
    Wit {
        /// Write the package into this directory instead of printing `observer.wit`: `observer.wit`,
        /// `http.wit` (the worlds that import wasi:http) and the WASI 0.2 packages they use, in `deps/`.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Generate bindings for a plugin language that needs them (C).
    Bindgen {
        /// The language.
        #[arg(value_enum)]
        lang: BindgenLang,
        /// Directory to write the bindings into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A WIT package directory to use instead of the one built into this binary.
        #[arg(long, value_name = "DIR")]
        wit: Option<PathBuf>,
        /// The world (`plugbus wit` prints them all): `observer`; `stateful-observer` for a
        /// plugin that exports `state` (snapshot and restore, so its state survives traps,
        /// reloads and restarts); `queryable-observer` and `projection` (`state` too) for one
        /// that answers queries; `batch-observer`, `stateful-batch-observer` and
        /// `batch-only-observer` for one that handles events in batches; `http-observer` and
        /// `stateful-http-observer` for one that sends HTTP requests. A name the WIT package
        /// does not have is refused with the list of those it has.
        #[arg(long, value_name = "WORLD", default_value = "observer")]
        world: String,
    },
    /// Load and validate one plugin; print its name, world, subscriptions and imports.
    Check {
        /// The plugin's `.wasm` file.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Sign a plugin: write FILE.minisig, a minisign signature (the format Debian's
    /// `minisign -V` verifies) that `--trusted-keys` checks at load.
    Sign {
        /// The minisign secret key (from `plugbus keygen` or `minisign -G`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// For a password-protected key: the environment variable holding its password (an
        /// unprotected key, from `plugbus keygen` or `minisign -G -W`, needs none).
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// The trusted comment, one line (signed too; default: the file name and the time).
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// The plugin's `.wasm` file.
        file: PathBuf,
    },
    /// Push a plugin to an OCI registry as a CNCF Wasm artifact: FILE, and beside it its manifest
    /// (NAME.toml) and signature (NAME.wasm.minisig) when present. Prints the manifest digest.
    Push {
        /// The plugin's `.wasm` file.
        file: PathBuf,
        /// Where to: oci://REGISTRY/REPOSITORY:TAG (plain HTTP for loopback registries).
        #[arg(value_name = "REF")]
        reference: String,
        #[command(flatten)]
        registry: oci::RegistryArgs,
        /// Print JSON (reference, digests, layers).
        #[arg(long)]
        json: bool,
    },
    /// Pull a plugin from an OCI registry into a plugin directory: bounded, checked against its
    /// digests (and its signature with --trusted-keys), renamed into place only once verified.
    /// Without REF: install what DIR/plugins.lock lists (as run and serve do at start).
    Pull {
        /// oci://REGISTRY/REPOSITORY:TAG or …@sha256:DIGEST.
        #[arg(value_name = "REF")]
        reference: Option<String>,
        /// The plugin directory to install into.
        #[arg(long, value_name = "DIR")]
        plugins: PathBuf,
        /// Install as NAME.wasm (default: the artifact's file name, else the repository's last segment).
        #[arg(long, value_name = "NAME", requires = "reference")]
        name: Option<String>,
        /// Record the plugin, pinned by digest, in DIR/plugins.lock.
        #[arg(long, requires = "reference")]
        lock: bool,
        /// Verify signatures against the minisign public keys in PATH (a `.pub` file or a directory).
        #[arg(long, value_name = "PATH")]
        trusted_keys: Option<PathBuf>,
        /// Refuse an artifact without a valid signature by a trusted key.
        #[arg(long, requires = "trusted_keys")]
        require_signed: bool,
        #[command(flatten)]
        registry: oci::RegistryArgs,
        /// Print one JSON object per plugin.
        #[arg(long)]
        json: bool,
    },
    /// Make a minisign key pair for signing plugins: KEY (secret, not password-protected,
    /// mode 0600) and KEY.pub (public: put it in the hosts' --trusted-keys directory).
    Keygen {
        /// Where to write the secret key; the public key goes beside it as `.pub`.
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
    },
}

/// Languages `plugbus new` can scaffold.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    /// Rust with the plugbus-guest SDK.
    Rust,
    /// C with clang and wasi-libc; bindings from `plugbus bindgen c`.
    C,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-qjs (QuickJS).
    Js,
}

/// Languages `plugbus bindgen` generates bindings for.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BindgenLang {
    /// `observer.h`, `observer.c`, `observer_component_type.o` (wit-bindgen-c).
    C,
}

/// Where replayed history comes from: an event log directory or a NATS
/// JetStream stream (exactly one).
#[derive(clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    source: HistorySource,
    /// The JetStream stream's name (with `--nats`).
    // `requires = "nats"` is not checked here (clap leaves it unchecked
    // beside the required group), so the one wrong pairing is refused.
    #[arg(long, value_name = "NAME", default_value = "PLUGBUS", conflicts_with = "log")]
    stream: String,
}

/// [`HistoryArgs`]'s source, a group of its own so that clap's usage and
/// error name both choices: `<--log <DIR>|--nats <URL>>`.
#[derive(clap::Args)]
#[group(id = "history_source", required = true, multiple = false)]
struct HistorySource {
    /// The event log to read.
    #[arg(long = "log", value_name = "DIR")]
    log: Option<PathBuf>,
    /// Or read the stream of this NATS JetStream server (`nats://HOST:PORT`), from its first retained event.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
}

impl HistoryArgs {
    /// A replay of this history into the plugins of `plugins`.
    fn replay(&self, plugins: &std::path::Path) -> anyhow::Result<plugbus::Replay> {
        match (&self.source.log, &self.source.nats) {
            (_, Some(url)) => Ok(plugbus::Replay::nats(
                plugins,
                plugbus::NatsOptions::new(url).stream(&self.stream),
            )),
            (Some(dir), None) => {
                log::check_dir(dir)?;
                Ok(plugbus::Replay::new(plugins, dir))
            }
            // clap requires one of them.
            (None, None) => anyhow::bail!("give --log DIR or --nats URL"),
        }
    }

    /// The dead letters this history keeps (of `plugin` only, when given):
    /// the log's journals, or the NATS stream's bucket.
    async fn dead_letters(&self, plugin: Option<&str>) -> anyhow::Result<Vec<plugbus::DeadLetter>> {
        match (&self.source.log, &self.source.nats) {
            (_, Some(url)) => {
                let options = plugbus::NatsOptions::new(url).stream(&self.stream);
                Ok(plugbus::nats::read_dead_letters(&options, plugin).await?)
            }
            (Some(dir), None) => {
                log::check_dir(dir)?;
                // One damaged line hides no other letter: it is named, and
                // skipped as a redrive skips it.
                let (letters, damaged) = plugbus::read_dead_letters_past_damage(dir, plugin)?;
                for e in damaged {
                    eprintln!(
                        "plugbus: skipped a damaged dead letter: {}",
                        plugbus::text::printable(&e.to_string())
                    );
                }
                Ok(letters)
            }
            (None, None) => anyhow::bail!("give --log DIR or --nats URL"),
        }
    }
}

/// Where compiled plugins are cached.
#[derive(clap::Args)]
pub struct CacheArgs {
    /// Cache compiled plugins here (default: the platform cache directory, e.g. ~/.cache/plugbus).
    #[arg(long, value_name = "DIR", global = true)]
    cache_dir: Option<PathBuf>,
    /// Compile every plugin on every load.
    #[arg(long, global = true, conflicts_with = "cache_dir")]
    no_cache: bool,
}

impl CacheArgs {
    pub fn apply(&self, builder: plugbus::BusBuilder) -> plugbus::BusBuilder {
        match (&self.cache_dir, self.no_cache) {
            (_, true) => builder.no_cache(),
            (Some(dir), false) => builder.cache_dir(dir),
            (None, false) => builder,
        }
    }
}

/// The event log, the event schemas, NATS and plugin signatures of `run` and `serve`.
#[derive(clap::Args)]
pub struct LogArgs {
    /// Append every event to the event log in DIR (created if missing; numbering continues).
    #[arg(long = "log", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// When a logged event counts as durable: always (fsync per batch), batched (group sync every 5 ms, or within
    /// 1 ms when a caller waits), off.
    #[arg(long, value_name = "POLICY", default_value = "batched", requires = "dir")]
    durability: plugbus::Durability,
    /// The group-sync period under `--durability batched`: the longest a plain event stays unsynced (what a
    /// power loss can take). A durable answer (`POST /events`, OTLP) does not wait for it: its sync comes at
    /// most 1 ms after the previous one.
    #[arg(long, value_name = "MS", default_value_t = 5, requires = "dir", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    sync_interval_ms: u64,
    /// Remove the log's oldest segments while it is larger than SIZE (`10GiB`, `500MB`; whole segments of
    /// 64 MiB go), even those a kept plugin snapshot still needs (with a warning). The request journal is
    /// compacted with it. Default: keep everything.
    #[arg(long, value_name = "SIZE", requires = "dir", value_parser = units::parse_size)]
    log_retention_bytes: Option<u64>,
    /// Remove the log's segments whose last event is older than AGE (`7d`, `12h`), unless a kept plugin
    /// snapshot still needs their events. Default: keep everything.
    #[arg(long, value_name = "AGE", requires = "dir", value_parser = units::parse_duration)]
    log_retention_age: Option<Duration>,
    /// The size at which a log segment is closed and the next begun (at least 4KiB): retention removes
    /// whole segments, so this is its granularity.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", requires = "dir", value_parser = units::parse_segment_size)]
    log_segment_bytes: u64,
    /// Check events against the JSON Schemas in DIR (`<event-name>.schema.json`).
    #[arg(long, value_name = "DIR")]
    schemas: Option<PathBuf>,
    /// An event its schema refuses: `reject` (not delivered; POST /events answers 422) or `warn` (delivered, logged).
    #[arg(long, value_name = "POLICY", default_value = "reject", requires = "schemas")]
    schema_policy: SchemaPolicyArg,
    /// Share the bus through this NATS JetStream server (`nats://HOST:PORT`, or a comma-separated list of a cluster's servers): events go to the stream,
    /// plugins pull their share from durable consumers shared with every host that loads them.
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// The JetStream stream's name.
    #[arg(long, value_name = "NAME", default_value = "PLUGBUS", requires = "nats")]
    stream: String,
    /// Partitions of the subject space (events of one correlation id share one).
    #[arg(long, value_name = "N", default_value_t = 8, requires = "nats", value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: u32,
    /// How long a message taken by a host may stay unacknowledged before the server gives it to another.
    #[arg(long, value_name = "MS", default_value_t = 30_000, requires = "nats", value_parser = clap::value_parser!(u64).range(100..))]
    ack_wait_ms: u64,
    #[command(flatten)]
    trust: TrustArgs,
    /// Credentials and transport for the registries DIR/plugins.lock names.
    #[command(flatten)]
    registry: oci::RegistryArgs,
}

/// Plugin signatures and the capability policy (see `plugbus::signature`, `plugbus::policy` and docs/trust.md).
#[derive(clap::Args)]
pub struct TrustArgs {
    /// Trust the minisign public keys in PATH (a `.pub` file or a directory of them): a plugin with
    /// a signature beside it (`NAME.wasm.minisig`) loads only if one of them signed exactly its bytes.
    #[arg(long, value_name = "PATH")]
    trusted_keys: Option<PathBuf>,
    /// Refuse plugins without a valid signature by a trusted key.
    #[arg(long, requires = "trusted_keys")]
    require_signed: bool,
    /// Bound what plugin manifests may grant (directories, catch-up, raised limits) with this
    /// capability policy (TOML; see docs/trust.md).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

impl TrustArgs {
    /// The signature policy these flags describe (for checks made outside
    /// a bus: pulls).
    pub fn signature_policy(&self) -> anyhow::Result<plugbus::SignaturePolicy> {
        oci::signature_policy(self.trusted_keys.as_deref(), self.require_signed)
    }

    pub fn apply(&self, builder: plugbus::BusBuilder) -> plugbus::BusBuilder {
        let builder = match &self.policy {
            Some(path) => builder.policy(path),
            None => builder,
        };
        match &self.trusted_keys {
            Some(path) => builder.trusted_keys(path).require_signed(self.require_signed),
            None => builder,
        }
    }
}

/// OpenTelemetry in, for `serve`: `POST /v1/traces` is on the main listener
/// always; these add the exporters' default port and the pass-through.
#[derive(clap::Args)]
pub struct OtlpArgs {
    /// Also take OTLP/HTTP on this address (`127.0.0.1:4318` is the exporters' default), beside the main listener.
    #[arg(long, value_name = "ADDR")]
    pub otlp_listen: Option<std::net::SocketAddr>,
    /// Pass spans that are not GenAI spans through as `otel.span` events (default: dropped and counted).
    #[arg(long)]
    pub otlp_all: bool,
}

/// `--schema-policy`.
#[derive(Clone, Copy, ValueEnum)]
pub enum SchemaPolicyArg {
    /// Refuse and count.
    Reject,
    /// Deliver, count and log.
    Warn,
}

impl LogArgs {
    pub fn apply(&self, builder: plugbus::BusBuilder) -> plugbus::BusBuilder {
        let builder = self.trust.apply(builder);
        let builder = match &self.dir {
            Some(dir) => builder
                .log_dir(dir)
                .durability(self.durability)
                .sync_interval(Duration::from_millis(self.sync_interval_ms))
                .retention(self.log_retention_bytes, self.log_retention_age)
                .segment_bytes(self.log_segment_bytes),
            None => builder,
        };
        let builder = match &self.schemas {
            Some(dir) => builder.schema_dir(dir).schema_policy(match self.schema_policy {
                SchemaPolicyArg::Reject => plugbus::SchemaPolicy::Reject,
                SchemaPolicyArg::Warn => plugbus::SchemaPolicy::Warn,
            }),
            None => builder,
        };
        match &self.nats {
            Some(url) => builder.nats(
                plugbus::NatsOptions::new(url)
                    .stream(&self.stream)
                    .partitions(self.partitions)
                    .ack_wait(Duration::from_millis(self.ack_wait_ms)),
            ),
            None => builder,
        }
    }
}

/// How `run` prints its report.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// A table for people.
    Text,
    /// One JSON object.
    Json,
}

/// The bus of `run` and `serve`; `history`: events kept for
/// [`plugbus::Bus::history`] (0: none). Plugins that failed to load are
/// reported once loaded; with `background` it returns before they are
/// ([`plugbus::BusBuilder::start`]) and the caller reports them with
/// [`report_skipped`] once [`plugbus::Bus::ready`].
async fn open_bus(
    plugins: &std::path::Path,
    watch: bool,
    cache: &CacheArgs,
    log: &LogArgs,
    history: usize,
    background: bool,
    exact_versions: bool,
) -> anyhow::Result<plugbus::Bus> {
    // Remote plugins the directory pins are installed before anything loads.
    oci::sync_before_start(plugins, &log.registry, &log.trust).await?;
    let builder = log
        .apply(cache.apply(plugbus::Bus::builder()))
        .plugin_dir(plugins)
        .watch(watch)
        .exact_versions(exact_versions)
        .history(history);
    if background {
        return Ok(builder.start().await?);
    }
    let bus = builder.build().await?;
    report_skipped(&bus);
    Ok(bus)
}

/// Prints the plugin files the bus refused at start, with the reason.
fn report_skipped(bus: &plugbus::Bus) {
    for f in bus.load_failures() {
        eprintln!(
            "plugbus: skipped {}: {}",
            plugbus::text::printable_path(&f.path),
            f.reason
        );
    }
}

pub async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            plugins,
            report,
            watch,
            grace_ms,
            input,
            cache,
            log,
        } => {
            run::run(
                &plugins,
                report,
                watch,
                Duration::from_millis(grace_ms),
                &input,
                &cache,
                &log,
            )
            .await
        }
        Command::Log { command } => log::log(command).await,
        Command::Dlq { command } => dlq::dlq(command).await,
        Command::Replay {
            plugins,
            history,
            from,
            correlation,
            only,
            emit,
            live_requests,
            cache,
        } => {
            if live_requests && emit != plugbus::ReplayEmit::Publish {
                // Bad arguments (exit 2, as clap's own), not a failed run.
                use clap::CommandFactory;
                Args::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--live-requests needs --emit publish: a replay that only prints what the plugins emit must not act on the world",
                    )
                    .exit();
            }
            replay::replay(replay::Args {
                replay: history.replay(&plugins)?,
                from,
                correlation,
                only,
                emit,
                live_requests,
                cache: &cache,
            })
            .await
        }
        Command::Query {
            plugins,
            history,
            name,
            request,
            pretty,
            cache,
        } => query::query(history.replay(&plugins)?, &name, &request, pretty, &cache).await,
        Command::New { name, lang, dir, sdk } => new::new(&name, lang, dir.as_deref(), sdk.as_deref()),
        Command::Serve {
            plugins,
            listen,
            grace_ms,
            client_timeout_ms,
            cache,
            log,
            otlp,
            history,
            allow_hosts,
            fleet,
        } => {
            serve::serve(serve::Options {
                plugins: &plugins,
                listen,
                grace: Duration::from_millis(grace_ms),
                client_timeout: Duration::from_millis(client_timeout_ms),
                cache: &cache,
                log: &log,
                otlp: &otlp,
                history,
                allow_hosts: &allow_hosts,
                fleet: &fleet,
            })
            .await
        }
        Command::Check {
            file,
            json,
            cache,
            trust,
        } => check::check(&file, json, &cache, &trust).await,
        Command::Sign {
            key,
            password_env,
            comment,
            file,
        } => sign::sign(&key, password_env.as_deref(), comment.as_deref(), &file),
        Command::Keygen { key } => sign::keygen(&key),
        Command::Fleet { command } => fleet::fleet(command).await,
        Command::Push {
            file,
            reference,
            registry,
            json,
        } => oci::push(&file, &reference, &registry, json).await,
        Command::Pull {
            reference,
            plugins,
            name,
            lock,
            trusted_keys,
            require_signed,
            registry,
            json,
        } => {
            oci::pull(oci::PullOptions {
                reference: reference.as_deref(),
                plugins: &plugins,
                name: name.as_deref(),
                lock,
                registry: &registry,
                trusted_keys: trusted_keys.as_ref(),
                require_signed,
                json,
            })
            .await
        }
        Command::Wit { out } => wit::wit(out.as_deref()),
        Command::Bindgen {
            lang: BindgenLang::C,
            out,
            wit,
            world,
        } => wit::bindgen_c(&out, wit.as_deref(), &world),
        Command::Bench {
            plugins,
            fixtures,
            events,
            only,
            json,
        } => bench::bench(&plugins, &fixtures, events, &only, json.as_ref()).await,
    }
}

/// An error with its causes, as one line: `context: cause: cause`. A cause
/// whose text the message before it already ends with (an error that both
/// shows and chains its source, like an I/O error inside a library error)
/// is printed once, not twice.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("plugin directory /x: {0}")]
    struct ShowsAndChains(#[source] std::io::Error);

    #[test]
    fn a_cause_already_shown_is_not_repeated() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = anyhow::Error::new(ShowsAndChains(io()));
        assert_eq!(
            error_text(&e),
            "plugin directory /x: No such file or directory (os error 2)"
        );
        let e = anyhow::Error::new(io()).context("cannot read events.jsonl");
        assert_eq!(
            error_text(&e),
            "cannot read events.jsonl: No such file or directory (os error 2)"
        );
        let e = anyhow::Error::new(ShowsAndChains(io())).context("cannot open the bus");
        assert_eq!(
            error_text(&e),
            "cannot open the bus: plugin directory /x: No such file or directory (os error 2)"
        );
    }
}
