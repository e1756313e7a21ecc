//! Scale-out on NATS JetStream: many processes and hosts share one logical
//! bus (see docs/scale-out.md).
//!
//! With [`BusBuilder::nats`](crate::BusBuilder::nats), every event published
//! on the bus (by the embedder, `POST /events`, or a plugin's follow-up) goes
//! to a JetStream stream instead of straight to the local plugins; each
//! plugin then pulls its events from a durable consumer shared by every
//! host that loads it, so the work is shared and an event a host took but
//! never acknowledged (it died) goes to another one.
//!
//! - `nats::wire`: subjects, partitions and the JSON envelope;
//! - `nats::publisher`: the non-blocking publish path (window, retries);
//! - `nats::consumer`: one plugin's consumer and the outcome → ack mapping;
//! - `nats::advisory`: the server's `MAX_DELIVERIES` and `MSG_TERMINATED`
//!   advisories as counters and `plugbus.nats.*` events;
//! - `nats::dead_letters`: the stream's dead letters, a key-value bucket
//!   every host shares (stored before a message is ended);
//! - `nats::port`: what the consumers ask of the bus (the bus implements
//!   it; nothing here imports the bus).
//!
//! What a host promises: an event is in the stream once its publish is
//! acknowledged (`PublishStats::acked`); a plugin handles every event of
//! the stream at least once across hosts (a redelivery after a host died,
//! or a lost ack, is handled again: follow-ups keep their deterministic ids,
//! so the stream drops their second copy); native handlers run only on the
//! host that emitted the event.

pub(crate) mod advisory;
pub(crate) mod consumer;
pub(crate) mod dead_letters;
pub(crate) mod port;
pub(crate) mod publisher;
pub(crate) mod reader;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream;
use serde::Serialize;

pub use consumer::ConsumerStats;
pub use dead_letters::dead_letter_bucket;
pub use publisher::{NotStored, PublishStats};

use crate::pattern::Pattern;
use port::NatsPort;

pub(crate) use crate::sync::lock;

/// Each plugin's consumers on this host, by plugin name.
pub(crate) type Consumers = Arc<Mutex<advisory::ConsumersMap>>;

/// How a bus joins a NATS JetStream stream. Defaults: stream `PLUGBUS`, 8
/// partitions, events kept 7 days, 2-minute duplicate window, `ack_wait` 30 s,
/// `max_deliver` 5.
///
/// ```
/// let nats = plugbus::NatsOptions::new("nats://127.0.0.1:4222").stream("AGENTS").partitions(16);
/// # let _ = nats;
/// ```
#[derive(Debug, Clone)]
pub struct NatsOptions {
    pub(crate) url: String,
    pub(crate) stream: String,
    pub(crate) partitions: u32,
    pub(crate) max_age: Duration,
    pub(crate) max_bytes: i64,
    pub(crate) duplicate_window: Duration,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: i64,
    pub(crate) publish_queue: usize,
    pub(crate) publish_window: usize,
    pub(crate) connect_timeout: Duration,
}

impl NatsOptions {
    /// The server at `url` (`nats://host:port`), with the defaults.
    pub fn new(url: impl Into<String>) -> NatsOptions {
        NatsOptions {
            url: url.into(),
            stream: "PLUGBUS".into(),
            partitions: 8,
            // A week of history for replay and new plugins.
            max_age: Duration::from_secs(7 * 24 * 3600),
            // No byte limit by default (-1): age bounds the stream.
            max_bytes: -1,
            // A retried or replayed publish within two minutes is dropped
            // by the server as a duplicate.
            duplicate_window: Duration::from_secs(120),
            // Far above any handler's deadline (100 ms by default): a
            // message is redelivered after this only when its host is gone.
            ack_wait: Duration::from_secs(30),
            // A message that came back this often without an ack is given
            // up (NATS publishes a MAX_DELIVERIES advisory).
            max_deliver: 5,
            // 8,192 events buffered on the way out: ~0.8 s at 10,000/s
            // while the server is briefly away.
            publish_queue: 8192,
            // 256 unanswered publishes: enough to keep a loopback server busy.
            publish_window: 256,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The stream's name (default `PLUGBUS`).
    pub fn stream(mut self, name: impl Into<String>) -> NatsOptions {
        self.stream = name.into();
        self
    }

    /// Partitions of the subject space (default 8, at least 1): events of
    /// one correlation id are always in one partition.
    pub fn partitions(mut self, n: u32) -> NatsOptions {
        self.partitions = n.max(1);
        self
    }

    /// How long the stream keeps events (default 7 days).
    pub fn max_age(mut self, age: Duration) -> NatsOptions {
        self.max_age = age;
        self
    }

    /// The stream's size cap in bytes (default none): the oldest go first.
    pub fn max_bytes(mut self, bytes: i64) -> NatsOptions {
        self.max_bytes = bytes;
        self
    }

    /// How long an unacknowledged message waits before the server gives it
    /// to another host (default 30 s).
    pub fn ack_wait(mut self, wait: Duration) -> NatsOptions {
        self.ack_wait = wait;
        self
    }

    /// The duplicate window of a stream this host creates (default 2
    /// minutes): a repeated event id within it is not stored again. It must
    /// cover a redelivered event's re-emitted follow-ups: `ack_wait` plus
    /// the longest plugin deadline (60 s), or the bus refuses to
    /// start. An existing stream keeps its own window (checked the same way).
    pub fn duplicate_window(mut self, window: Duration) -> NatsOptions {
        self.duplicate_window = window;
        self
    }

    /// Deliveries of one message at most (default 5).
    pub fn max_deliver(mut self, n: i64) -> NatsOptions {
        self.max_deliver = n;
        self
    }
}

/// Why the bus could not join NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server could not be reached.
    #[error("NATS server {url}: {reason}")]
    Connect {
        /// The URL given.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// The stream could not be created or used.
    #[error("NATS stream `{stream}`: {reason}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What the server said.
        reason: String,
    },
}

/// The bus's view of NATS (`Bus::nats_status`, `GET /plugins`, `/metrics`).
#[derive(Debug, Clone, Serialize)]
pub struct NatsStatus {
    /// The server URL.
    pub url: String,
    /// The stream.
    pub stream: String,
    /// Partitions.
    pub partitions: u32,
    /// The publisher's counters.
    pub publish: PublishStats,
    /// Each loaded plugin's consumer, by plugin name.
    pub consumers: BTreeMap<String, ConsumerStats>,
}

/// A client of the server in `options`, which reconnects by itself once
/// connected (acknowledged events are in the stream, and pulls resume where
/// they stopped).
///
/// # Errors
/// [`NatsError::Connect`] naming the URL when the server does not answer
/// within the connect timeout or refuses the connection.
pub(crate) async fn connect_client(options: &NatsOptions) -> Result<async_nats::Client, NatsError> {
    let connect_err = |reason: String| NatsError::Connect {
        url: shown_url(&options.url),
        reason,
    };
    let connect = with_url_credentials(
        async_nats::ConnectOptions::new()
            .connection_timeout(options.connect_timeout)
            .max_reconnects(None),
        &options.url,
    );
    let servers = tcp_servers(&options.url).map_err(connect_err)?;
    tokio::time::timeout(options.connect_timeout, connect.connect(servers))
        .await
        .map_err(|_| connect_err(format!("no answer within {:?}", options.connect_timeout)))?
        .map_err(|e| connect_err(e.to_string()))
}

/// The servers of a `--nats` value: one URL, or several separated by commas
/// (`nats://a:4222,nats://b:4222`, a cluster's seed list, as other NATS
/// clients take it); the client tries them in turn and reconnects to any.
pub(crate) fn servers(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
}

/// [`servers`], refusing a WebSocket URL (`ws://`, `wss://`): the client is
/// built without WebSocket support and would speak plain NATS over TCP to
/// that port instead, failing with a protocol error, or, on a server's NATS
/// port, connecting without the WebSocket the URL asked for.
///
/// # Errors
/// The reason, naming the URL (its password hidden), for a WebSocket URL.
pub(crate) fn tcp_servers(url: &str) -> Result<Vec<&str>, String> {
    let servers = servers(url);
    match servers.iter().find(|s| {
        let scheme = s.split_once("://").map_or("", |(scheme, _)| scheme);
        scheme.eq_ignore_ascii_case("ws") || scheme.eq_ignore_ascii_case("wss")
    }) {
        Some(ws) => {
            // The error names the whole value already; one of a list is named again.
            let which = if servers.len() > 1 {
                format!("{} is ", shown_url(ws))
            } else {
                String::new()
            };
            Err(format!(
                "{which}a WebSocket URL, which plugbus does not speak: give the server's NATS \
                 port (`nats://HOST:4222`, or `tls://` for TLS)"
            ))
        }
        None => Ok(servers),
    }
}

/// `connect` with the credentials `url` carries: the client reads none
/// from the URL itself, so a user and password (`nats://user:pass@host`) or
/// a token (`nats://token@host`) given there are handed over as options,
/// percent-decoded. In a list of servers, the first that carries any
/// (the client has one set of credentials for every server).
pub(crate) fn with_url_credentials(connect: async_nats::ConnectOptions, url: &str) -> async_nats::ConnectOptions {
    let Some(addr) = servers(url)
        .into_iter()
        .filter_map(|one| one.parse::<async_nats::ServerAddr>().ok())
        .find(|addr| addr.username().is_some())
    else {
        return connect;
    };
    let decoded = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    match (addr.username(), addr.password()) {
        (Some(user), Some(pass)) => connect.user_and_password(decoded(user), decoded(pass)),
        (Some(token), None) => connect.token(decoded(token)),
        _ => connect,
    }
}

/// `url` as it may be shown (errors, `GET /plugins`, logs): a password,
/// or a token given as the user, replaced by `***`.
///
/// ```text
/// nats://alice:s3cret@nats.internal:4222  ->  nats://alice:***@nats.internal:4222
/// nats://t0ken@nats.internal              ->  nats://***@nats.internal
/// ```
pub fn shown_url(url: &str) -> String {
    if url.contains(',') {
        return servers(url).into_iter().map(shown_url).collect::<Vec<_>>().join(",");
    }
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    let prefix = if url.contains("://") {
        format!("{scheme}://")
    } else {
        String::new()
    };
    format!("{prefix}{shown}{}", &rest[at..])
}

/// The longest a plugin may run on one event (the manifest's largest
/// `deadline_ms`): a redelivered parent re-emits its follow-ups up to this
/// long after it was taken again.
const LONGEST_HANDLING: Duration = Duration::from_secs(60);

/// The longest time between a follow-up's first store and its re-emission
/// by a redelivered parent, with `ack_wait`: the first handling emits it
/// and runs on for up to [`LONGEST_HANDLING`] (its host saying it is in
/// progress); the parent comes back `ack_wait` after that host died (or
/// after a Nak's backoff, at most `consumer::NAK_MAX`), and its next
/// handling emits the follow-up again. A poison event whose dead letter
/// could not be stored adds the time its store was tried
/// (`consumer::letter_patience`, at most 10 s) before its `Nak`. The stream
/// drops that copy only within its duplicate window.
pub(crate) fn redelivery_gap(ack_wait: Duration) -> Duration {
    LONGEST_HANDLING + ack_wait.max(consumer::NAK_MAX) + consumer::letter_patience(ack_wait)
}

/// A stream made beforehand (by hand, or by another tool) must keep what
/// plugbus relies on: every message kept until its age or size limit
/// (`limits` retention: `workqueue` refuses the consumers every plugin
/// needs, `interest` deletes a message once acknowledged, leaving nothing
/// for replay, queries or catch-up), on the server's disk (`file`: a
/// memory stream loses every event at a server restart, while `POST
/// /events` would answer that it is durable).
fn check_retention_and_storage(
    retention: jetstream::stream::RetentionPolicy,
    storage: jetstream::stream::StorageType,
) -> Result<(), String> {
    use jetstream::stream::{RetentionPolicy, StorageType};
    if retention != RetentionPolicy::Limits {
        return Err(format!(
            "it exists with {retention:?} retention; plugbus needs Limits (messages kept until their age or size limit, for every consumer, replay and catch-up)"
        ));
    }
    if storage != StorageType::File {
        return Err(format!(
            "it exists with {storage:?} storage; plugbus needs File (a memory stream loses every event at a server restart)"
        ));
    }
    Ok(())
}

/// Refuses an `ack_wait` for which a redelivered parent's follow-ups could
/// come back after the stream's duplicate window (`window`, the stream's
/// own when it exists) and be stored twice; warns about a stream whose
/// window is shorter than the one plugbus creates.
fn check_duplicate_window(options: &NatsOptions, window: Duration) -> Result<(), String> {
    let gap = redelivery_gap(options.ack_wait);
    if gap > window {
        let max_ms = window
            .saturating_sub(LONGEST_HANDLING + consumer::letter_patience(Duration::MAX))
            .as_millis();
        // A window shorter than the handling and the letter's patience
        // alone leaves no `ack_wait` that fits: only the window can change.
        let lower = if max_ms > 0 {
            format!("lower `--ack-wait-ms` to at most {max_ms} or ")
        } else {
            String::new()
        };
        return Err(format!(
            "its duplicate window is {window:?}, but with ack_wait {ack_wait:?} (`--ack-wait-ms {ms}`) a redelivered \
             event may re-emit its follow-ups up to {gap:?} after they were stored (ack_wait + the longest plugin \
             deadline, {LONGEST_HANDLING:?}, + the time a dead letter's store is tried, {patience:?}), and they would be stored twice: {lower}\
             give the stream a duplicate window of at least {gap:?} (`nats stream edit {stream} \
             --dupe-window`)",
            ack_wait = options.ack_wait,
            ms = options.ack_wait.as_millis(),
            patience = consumer::letter_patience(options.ack_wait),
            stream = options.stream,
        ));
    }
    if window < options.duplicate_window {
        tracing::warn!(
            stream = %options.stream,
            duplicate_window = ?window,
            assumed = ?options.duplicate_window,
            "the stream's duplicate window is shorter than the one plugbus creates streams with"
        );
    }
    Ok(())
}

/// How long a shutdown waits at least for the client's last writes to reach
/// the server, even when its grace period is spent.
const FLUSH_AT_LEAST: Duration = Duration::from_secs(1);

/// What a bus holds when it is on NATS.
pub(crate) struct NatsLink {
    options: NatsOptions,
    js: jetstream::Context,
    /// For key-value buckets and reads: without the publisher's window.
    buckets: jetstream::Context,
    pub publisher: Arc<publisher::Publisher>,
    /// The stream's dead letters, shared by every host.
    pub(crate) letters: Arc<dead_letters::LetterBucket>,
    /// Each plugin's consumers: one, or one per partition when ordered.
    /// Shared with the tasks that refresh their server-side counts and
    /// read the advisories.
    consumers: Consumers,
    /// Set once the advisory reader runs (started with the first consumer,
    /// when the bus's port exists).
    advisories: std::sync::OnceLock<()>,
    /// The ends of the consumers [`stop_all`](Self::stop_all) stopped: a
    /// stop cut short by the grace period leaves their tasks settling what
    /// they took, which [`finish`](Self::finish) still waits for.
    stopped: Mutex<Vec<consumer::Ending>>,
}

impl NatsLink {
    /// The stream's request journal (see [`journal_bucket`]), created if
    /// needed, its records kept as long as the stream keeps events.
    ///
    /// # Errors
    /// [`JournalError`](crate::http::JournalError) naming the bucket.
    pub(crate) async fn request_journal(&self) -> Result<crate::http::RequestJournal, crate::http::JournalError> {
        crate::http::RequestJournal::nats(
            &self.buckets,
            &journal_bucket(&self.options.stream),
            self.options.max_age,
        )
        .await
    }
}

/// The key-value bucket holding the request journal of `stream`: every
/// host of the stream records its plugins' requests there, so a redelivery
/// to another host, or a replay of the stream, answers them from it.
pub fn journal_bucket(stream: &str) -> String {
    format!("{stream}_REQUESTS")
}

/// The request journal of the stream of `options`, to answer a replay's
/// requests: read-only, empty when the stream's hosts never made one.
///
/// # Errors
/// [`NatsError`] naming the server, or the bucket that cannot be read.
pub(crate) async fn replay_journal(options: &NatsOptions) -> Result<crate::http::RequestJournal, NatsError> {
    let js = jetstream::new(connect_client(options).await?);
    let bucket = journal_bucket(&options.stream);
    crate::http::RequestJournal::nats_read_only(&js, &bucket)
        .await
        .map_err(|e| NatsError::Stream {
            stream: bucket,
            reason: e.to_string(),
        })
}

/// The dead letters kept in the stream of `options` (of `plugin` only,
/// when given), every host's, oldest first: what `plugbus dlq list --nats`
/// shows. Never makes the bucket.
///
/// # Errors
/// [`DeadLetterError::Nats`](crate::DeadLetterError::Nats) naming the
/// server or the bucket that cannot be read, or that does not exist (no
/// host of that stream ever ran: a wrong `--stream`?).
pub async fn read_dead_letters(
    options: &NatsOptions,
    plugin: Option<&str>,
) -> Result<Vec<crate::DeadLetter>, crate::DeadLetterError> {
    let bucket = dead_letter_bucket(&options.stream);
    let err = |reason: String| crate::DeadLetterError::Nats {
        bucket: bucket.clone(),
        reason,
    };
    let js = jetstream::new(connect_client(options).await.map_err(|e| err(e.to_string()))?);
    match dead_letters::LetterBucket::open_existing(&js, &options.stream)
        .await
        .map_err(err)?
    {
        Some(letters) => letters.list(plugin).await.map_err(err),
        None => Err(err(format!(
            "no such bucket: no host of stream `{}` has run on this server (is the stream's name right?)",
            options.stream
        ))),
    }
}

/// How often the server's counts of this host's consumers (pending,
/// unacknowledged) are read: once a second is fresh enough for a dashboard
/// and `/metrics`, and it is one paged request per host whatever the number
/// of consumers (an ordered plugin has one per partition).
const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// Reads every consumer of `stream` from the server each [`COUNTS_EVERY`]
/// and copies the counts of this host's into their stats; ends when the
/// bus drops its link.
async fn refresh_counts(
    js: jetstream::Context,
    stream: String,
    consumers: Weak<Mutex<BTreeMap<String, Vec<consumer::ConsumerHandle>>>>,
) {
    use futures_util::StreamExt;
    let mut tick = tokio::time::interval(COUNTS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Looked up once (each lookup is a request for the stream's info).
    let mut handle: Option<jetstream::stream::Stream> = None;
    loop {
        tick.tick().await;
        let Some(consumers) = consumers.upgrade() else {
            return;
        };
        let by_name: HashMap<String, Arc<Mutex<ConsumerStats>>> = lock(&consumers)
            .values()
            .flatten()
            .map(|h| (h.name.clone(), h.stats.clone()))
            .collect();
        drop(consumers);
        if by_name.is_empty() {
            continue;
        }
        if handle.is_none() {
            match js.get_stream(&stream).await {
                Ok(s) => handle = Some(s),
                Err(e) => {
                    tracing::debug!(stream = %stream, error = %e, "reading the consumers' counts failed");
                    continue;
                }
            }
        }
        let Some(listing) = handle.as_ref().map(|s| s.consumers()) else {
            continue;
        };
        let mut listing = std::pin::pin!(listing);
        while let Some(item) = listing.next().await {
            match item {
                Ok(info) => {
                    if let Some(stats) = by_name.get(&info.name) {
                        let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                        s.pending = info.num_pending;
                        s.ack_pending = info.num_ack_pending as u64;
                    }
                }
                Err(e) => {
                    tracing::debug!(stream = %stream, error = %e, "reading the consumers' counts failed");
                    break;
                }
            }
        }
    }
}

impl NatsLink {
    /// Connects, creates the stream or checks the existing one, and starts
    /// the publisher.
    pub async fn connect(options: NatsOptions) -> Result<NatsLink, NatsError> {
        let client = connect_client(&options).await?;
        // Key-value buckets (dead letters, the request journal) get a context
        // of their own: their puts never take the publisher's ack permits,
        // nor wait behind its window.
        let buckets = jetstream::new(client.clone());
        // The context's ack permits equal the publisher's window, which
        // never has more publishes out than that: a send never waits for a
        // permit held by an ack the publisher is not polling.
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(options.publish_window)
            .backpressure_on_inflight(true)
            .build(client);
        let stream_err = |reason: String| NatsError::Stream {
            stream: options.stream.clone(),
            reason,
        };
        let config = jetstream::stream::Config {
            name: options.stream.clone(),
            subjects: vec![format!("{}.>", wire::SUBJECT_PREFIX)],
            max_age: options.max_age,
            max_bytes: options.max_bytes,
            duplicate_window: options.duplicate_window,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        let info = stream.info().await.map_err(|e| stream_err(e.to_string()))?;
        let wanted = format!("{}.>", wire::SUBJECT_PREFIX);
        if !info.config.subjects.contains(&wanted) {
            return Err(stream_err(format!(
                "it exists with subjects {:?}, not `{wanted}`",
                info.config.subjects
            )));
        }
        check_duplicate_window(&options, info.config.duplicate_window).map_err(stream_err)?;
        check_retention_and_storage(info.config.retention, info.config.storage).map_err(stream_err)?;
        let letters = dead_letters::LetterBucket::open(&buckets, &options.stream)
            .await
            .map_err(|reason| NatsError::Stream {
                stream: format!("KV_{}", dead_letter_bucket(&options.stream)),
                reason,
            })?;
        let publisher = Arc::new(publisher::Publisher::start(
            js.clone(),
            options.partitions,
            options.publish_queue,
            options.publish_window,
            &tokio::runtime::Handle::current(),
        ));
        let consumers = Arc::new(Mutex::new(BTreeMap::new()));
        tokio::spawn(refresh_counts(
            js.clone(),
            options.stream.clone(),
            Arc::downgrade(&consumers),
        ));
        Ok(NatsLink {
            options,
            js,
            buckets,
            publisher,
            letters: Arc::new(letters),
            consumers,
            advisories: std::sync::OnceLock::new(),
            stopped: Mutex::new(Vec::new()),
        })
    }

    /// Starts plugin `plugin`'s consumer, or with `ordered` one per
    /// partition; returns once they are bound on the server. Called again
    /// after a hot swap: consumers that still fit (same filter, same
    /// `max_ack_pending`, ordered or not) are kept, since each message is
    /// matched against the running version's subscriptions; otherwise they
    /// are stopped (what they took finishes and is acknowledged) and the
    /// new version's started in their place, changed on the server (see
    /// `consumer::Reshape`). Callers serialise loads (the bus's lifecycle
    /// lock), so two starts never race for one name.
    pub async fn start_consumer(
        &self,
        plugin: &str,
        patterns: Vec<Pattern>,
        capacity: usize,
        replay_all: bool,
        ordered: bool,
        port: Weak<dyn NatsPort>,
    ) {
        let partitions: Vec<Option<u32>> = if ordered {
            (0..self.options.partitions).map(Some).collect()
        } else {
            vec![None]
        };
        let shapes: Vec<(String, usize)> = partitions
            .iter()
            .map(|p| consumer::shape(&patterns, *p, capacity))
            .collect();
        let previous = {
            let mut consumers = lock(&self.consumers);
            match consumers.get(plugin) {
                Some(running) if running.iter().map(|h| &h.shape).eq(shapes.iter()) => return,
                Some(_) => consumers.remove(plugin),
                None => None,
            }
        };
        let reshape = match previous {
            Some(previous) => Some(self.retire(plugin, previous, &partitions).await),
            None => None,
        };
        if self.advisories.set(()).is_ok() {
            advisory::start(
                self.buckets.clone(),
                self.letters.clone(),
                &self.options.stream,
                Arc::downgrade(&self.consumers),
                port.clone(),
            )
            .await;
        }
        let mut handles = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let handle = consumer::start(
                self.js.clone(),
                &self.options,
                plugin,
                partition,
                patterns.clone(),
                capacity,
                replay_all,
                reshape,
                port.clone(),
                self.publisher.clone(),
                self.letters.clone(),
            )
            .await;
            handles.push(handle);
        }
        lock(&self.consumers).insert(plugin.to_owned(), handles);
    }

    /// Stops the consumers of a plugin's previous version, whose filter,
    /// `max_ack_pending` or partitioning its new version changed: what they
    /// took finishes and is acknowledged. Returns where a new consumer
    /// starts (just after the lowest acknowledged floor among them), and
    /// logs the ones the new version does not use any more: they stay on
    /// the server for hosts still running the previous version.
    async fn retire(
        &self,
        plugin: &str,
        previous: Vec<consumer::ConsumerHandle>,
        partitions: &[Option<u32>],
    ) -> consumer::Reshape {
        tracing::info!(
            plugin,
            "the plugin's new version needs other NATS consumers; re-creating them"
        );
        for h in &previous {
            h.stop().await;
        }
        let mut from = None;
        if let Ok(stream) = self.js.get_stream(&self.options.stream).await {
            for h in &previous {
                match stream.consumer_info(&h.name).await {
                    Ok(info) => {
                        let next = info.ack_floor.stream_sequence + 1;
                        from = Some(from.map_or(next, |f: u64| f.min(next)));
                    }
                    Err(e) => {
                        tracing::warn!(plugin, consumer = %h.name, error = %e, "cannot read the previous consumer's acknowledged floor")
                    }
                }
            }
        }
        let kept: Vec<String> = partitions.iter().map(|p| consumer::durable_name(plugin, *p)).collect();
        for h in previous.iter().filter(|h| !kept.contains(&h.name)) {
            tracing::warn!(plugin, consumer = %h.name, "the plugin's new version no longer uses this NATS consumer; it stays on the server for hosts running the previous version: delete it (`nats consumer rm`) once none does");
        }
        consumer::Reshape { from }
    }

    /// Stops plugin `plugin`'s consumer: no more pulls; in-flight events
    /// finish and are acknowledged.
    pub async fn stop_consumer(&self, plugin: &str) {
        let handles = lock(&self.consumers).remove(plugin);
        for handle in handles.iter().flatten() {
            handle.stop().await;
        }
    }

    /// Stops every consumer (shutdown).
    pub async fn stop_all(&self) {
        let handles: Vec<_> = std::mem::take(&mut *lock(&self.consumers))
            .into_values()
            .flatten()
            .collect();
        // Signal every consumer first, so they all stop pulling at once.
        for h in &handles {
            h.signal();
        }
        lock(&self.stopped).extend(handles.iter().map(consumer::ConsumerHandle::ending));
        for h in &handles {
            h.stop().await;
        }
    }

    /// The last step of a shutdown, once the plugins' workers have stopped
    /// (every outcome is in): waits for the stopped consumers to settle
    /// what they took (their follow-ups' store acks, then the Ack, Nak or
    /// Term) and for the publisher's last acks, then flushes the client and
    /// makes one round trip to the server, so the acknowledgements queued
    /// in the client reached the server before the process exits (one lost
    /// there would mean a redelivery: the event handled twice). All within
    /// `within`; what is left then is logged.
    pub async fn finish(&self, within: Duration) {
        let endings = std::mem::take(&mut *lock(&self.stopped));
        let deadline = tokio::time::Instant::now() + within;
        let settled = async {
            for ending in &endings {
                ending.wait().await;
            }
        };
        if tokio::time::timeout_at(deadline, settled).await.is_err() {
            tracing::warn!("NATS consumers still settling events at shutdown; those events will be redelivered");
        }
        if tokio::time::timeout_at(deadline, self.publisher.flush()).await.is_err() {
            tracing::warn!(stats = ?self.publisher.stats(), "events still unacknowledged by the NATS server at shutdown");
        }
        // A flush writes what the client queued (the acks are
        // fire-and-forget); the server answers a request only after it read
        // everything sent before it on this connection.
        let client = self.js.client();
        let delivered = async {
            client.flush().await.map_err(|e| e.to_string())?;
            // Any answer will do: the account's JetStream info.
            client
                .request("$JS.API.INFO", bytes::Bytes::new())
                .await
                .map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        };
        // At least a moment for the flush, even when the grace period is spent.
        let flush_by = deadline.max(tokio::time::Instant::now() + FLUSH_AT_LEAST);
        match tokio::time::timeout_at(flush_by, delivered).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => {
                tracing::warn!(%reason, "the last acknowledgements may not have reached the NATS server; those events will be redelivered")
            }
            Err(_) => tracing::warn!(
                "the NATS server did not confirm the last acknowledgements in time; those events may be redelivered"
            ),
        }
    }

    pub fn status(&self) -> NatsStatus {
        // An ordered plugin's partitions are listed as `<plugin>/p<k>`.
        let consumers = lock(&self.consumers)
            .iter()
            .flat_map(|(name, handles)| {
                let ordered = handles.len() > 1;
                handles.iter().enumerate().map(move |(k, h)| {
                    let key = if ordered { format!("{name}/p{k}") } else { name.clone() };
                    (key, h.stats.lock().unwrap_or_else(|e| e.into_inner()).clone())
                })
            })
            .collect();
        NatsStatus {
            url: shown_url(&self.options.url),
            stream: self.options.stream.clone(),
            partitions: self.options.partitions,
            publish: self.publisher.stats(),
            consumers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_list_is_split_and_each_password_hidden() {
        assert_eq!(servers("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            tcp_servers("nats://a:4222,tls://b").unwrap(),
            ["nats://a:4222", "tls://b"]
        );
        for ws in ["ws://a:8080", "nats://a:4222, WSS://u:secret@b:443"] {
            let e = tcp_servers(ws).unwrap_err();
            assert!(e.contains("WebSocket") && !e.contains("secret"), "{e}");
        }
        assert_eq!(
            servers(" nats://a:4222, nats://b:4222 ,"),
            ["nats://a:4222", "nats://b:4222"]
        );
        assert_eq!(
            shown_url("nats://alice:s3cret@a:4222,nats://bob:pw@b:4222"),
            "nats://alice:***@a:4222,nats://bob:***@b:4222"
        );
        assert_eq!(shown_url("nats://t0ken@a"), "nats://***@a");
        assert_eq!(shown_url("nats://a:4222"), "nats://a:4222");
    }
}
