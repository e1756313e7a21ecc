//! One plugin's durable pull consumer: every host that loads plugin `P`
//! pulls from `plugbus-P`, so the stream's events for `P` are shared between
//! hosts. A host holds at most the plugin's queue capacity of unacknowledged
//! messages (it never pulls what the plugin cannot queue), pulls nothing
//! while the plugin is quarantined, and maps each outcome to an
//! acknowledgement ([`verdict`]):
//!
//! | outcome | ack | why |
//! |---|---|---|
//! | ok, or the guest's `Err`, every follow-up stored | `Ack` | handled (an `Err` is the plugin's answer) |
//! | ok or `Err`, but a follow-up not stored (queue full, every attempt failed, too large) | `Nak(backoff)` | never acknowledged without its follow-ups; the server gives it up after `max_deliver` (a `MAX_DELIVERIES` advisory) |
//! | a deterministic hard failure (trap, panic, out of fuel, memory, stack) | `Term` | the worker recovered the plugin; the same input would fail the same way again |
//! | a transient hard failure (deadline, host error), the first one of this event here | `Nak(backoff)` | a loaded machine misses a wall-clock deadline; another try (here or elsewhere) may pass |
//! | a transient hard failure of an event that already failed transiently here | `Term` | it failed twice: treated as poison |
//! | dropped: quarantined | `Nak(until the quarantine ends)` | comes back once the plugin takes events again |
//! | dropped: unloaded, shutting down, queue full | `Nak(backoff)` | another host (or this one, later) takes it |
//! | an envelope that does not parse | `Term` | it can never be handled; logged with the stream sequence |
//! | an event the running version's patterns do not match | `Ack` | the consumer's filter is wider than its patterns |
//!
//! `backoff` is 250 ms on the first delivery, doubling with each delivery,
//! at most 8 s.
//!
//! **Dead letters.** Before a message is ended (`Term`) for a hard failure,
//! and before the `Nak` of its last delivery (`max_deliver`: the server
//! gives it up), its event is stored as a dead letter in the stream's
//! bucket (`nats::dead_letters`) and the store acknowledged. A letter that
//! cannot be stored turns the `Term` into a `Nak`: the event comes back
//! rather than vanishing with no record.
//!
//! The loop never waits for an acknowledgement's preconditions: outcomes and
//! their follow-ups' store acks are awaited together, beside the pulls and
//! the progress acks. Pulls carry an idle heartbeat, so a pull request the
//! server lost is noticed within two heartbeats, not at its expiry.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dead_letter::DeadLetter;
use crate::nats::dead_letters::LetterBucket;
use crate::nats::port::{NatsPort, Offered};
use crate::nats::publisher::{NotStored, Publisher};
use crate::nats::{NatsOptions, wire};
use crate::outcome::{DropReason, Failure, Outcome};
use crate::pattern::Pattern;
use crate::plugin::worker::Job;

/// What one consumer reports (`Bus::nats_status`, `GET /plugins`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ConsumerStats {
    /// The durable consumer's name on the server.
    pub consumer: String,
    /// Messages this host acknowledged as handled.
    pub acked: u64,
    /// Messages it refused for another try (`Nak`).
    pub nakked: u64,
    /// Messages it ended (`Term`): poison events and unreadable envelopes.
    pub terminated: u64,
    /// Messages that arrived redelivered (delivered more than once).
    pub redelivered: u64,
    /// Of the `nakked`: handled, but a follow-up they caused was not stored.
    pub follow_ups_not_stored: u64,
    /// `MAX_DELIVERIES` advisories seen for this consumer (any host's
    /// message): messages the server gave up on.
    pub max_deliveries: u64,
    /// `MSG_TERMINATED` advisories seen for this consumer (any host's Term).
    pub terminated_advisories: u64,
    /// Dead letters this host stored in the stream's bucket (before a
    /// `Term`, or before the `Nak` of a last delivery).
    pub dead_letters: u64,
    /// Dead letters it could not store (in time): the `Term` became a
    /// `Nak`, and on a last delivery the server's advisory tries again.
    pub dead_letters_not_stored: u64,
    /// True while the plugin is quarantined here and this host pulls nothing.
    pub paused: bool,
    /// From the server, at the last refresh: messages not yet delivered.
    pub pending: u64,
    /// From the server: delivered and not yet acknowledged, over all hosts.
    pub ack_pending: u64,
    /// Why this consumer does not run (a configuration that differs from
    /// what this host asks for, or a server error), if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The handle the bus keeps for a running consumer.
pub(crate) struct ConsumerHandle {
    /// The durable consumer's name on the server.
    pub name: String,
    /// Its subject filter and `max_ack_pending` (see [`shape`]): a hot
    /// reload that needs others re-creates the consumer.
    pub shape: (String, usize),
    stop: watch::Sender<bool>,
    /// Closed once the consumer's task has ended (see [`Ending`]).
    ended: Ending,
    pub stats: Arc<Mutex<ConsumerStats>>,
}

impl ConsumerHandle {
    /// Tells the consumer to stop pulling, without waiting.
    pub fn signal(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops pulling, lets the in-flight events finish and acknowledges
    /// them, then returns. Cancel-safe: a stop cut short by a timeout
    /// leaves the task running to its end, which [`ending`](Self::ending)
    /// still awaits.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        self.ended.wait().await;
    }

    /// What resolves once the consumer's task has ended (its last
    /// acknowledgement handed to the client), kept by whoever must wait for
    /// it after this handle is gone (the shutdown).
    pub fn ending(&self) -> Ending {
        self.ended.clone()
    }
}

/// The end of a consumer's task, to await any number of times: the task
/// holds the receiving side and drops it when it ends (returns, panics or
/// is dropped with the runtime).
#[derive(Clone)]
pub(crate) struct Ending(mpsc::Sender<()>);

impl Ending {
    /// An ending and what the task holds until it ends.
    fn new() -> (Ending, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel(1);
        (Ending(tx), rx)
    }

    /// Resolves once the task has ended.
    pub async fn wait(&self) {
        self.0.closed().await;
    }
}

/// First Nak delay: long enough that a failing event does not spin through
/// its `max_deliver` deliveries in milliseconds, short enough that a
/// passing hiccup costs a quarter second.
const NAK_BASE: Duration = Duration::from_millis(250);

/// Longest Nak delay: the fifth delivery (the default `max_deliver`) comes
/// ~4 s after the first, the sixth ~8 s: a server restart or a burst of
/// load is ridden out, and a poison message is given up within ~16 s.
pub(crate) const NAK_MAX: Duration = Duration::from_secs(8);

/// How often the server sends an idle heartbeat on a waiting pull: a lost
/// pull request (a reconnect, a server restart) is noticed after two missed
/// ones instead of at the request's expiry.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);

/// What a held message's dead letter is made of.
struct LetterOf<'a> {
    plugin: &'a str,
    /// The message's payload: the event's envelope.
    payload: &'a [u8],
    /// Its stream sequence.
    seq: u64,
    /// Its deliveries so far, this one included.
    delivered: i64,
    outcome: Option<&'a Outcome>,
    /// Its follow-ups' storing.
    stored: &'a Result<usize, NotStored>,
}

impl LetterOf<'_> {
    /// Stores the event as the plugin's dead letter, described by its
    /// outcome; returns once the server has it.
    async fn keep(&self, letters: &LetterBucket) -> Result<(), String> {
        let event = wire::decode(self.payload, self.seq)?;
        // This path's own failpoint (the advisory's keeper does not pass
        // it), so a test can make the host's stores fail and see the
        // advisory keep them.
        crate::failpoint::hit("nats.dead_letter.keep").map_err(|e| format!("bucket `{}`: {e}", letters.name()))?;
        let letter = match self.outcome {
            Some(Outcome::Failed(f)) => DeadLetter::new(self.plugin, &event, f),
            other => {
                let last = match (other, self.stored) {
                    (Some(Outcome::Dropped(reason)), _) => format!("dropped: {reason}"),
                    (Some(_), Err(reason)) => format!("a follow-up was not stored: {reason}"),
                    (Some(Outcome::Error(e)), Ok(_)) => format!("error: {e}"),
                    (Some(_), Ok(_)) => "handled".to_owned(),
                    (None, _) => "no outcome: the plugin went away".to_owned(),
                };
                DeadLetter::given_up(self.plugin, &event, self.delivered, &last)
            }
        };
        letters.keep(&letter).await?;
        // A store the server took whose answer is lost looks like a failure
        // (the Term becomes a Nak): the letter exists anyway.
        crate::failpoint::hit("nats.dead_letter.kept").map_err(|e| format!("bucket `{}`: {e}", letters.name()))
    }

    /// [`keep`](Self::keep), tried again with a backoff (100 ms doubling to
    /// 2 s, each attempt bounded by 5 s) for up to `patience`: a server
    /// restarting, or a bucket slow for a moment, costs a wait, not a
    /// letter. The message is still held meanwhile (and said to be in
    /// progress), so a server that is up neither hands it to another host
    /// nor gives it up.
    ///
    /// A consumer told to stop gives up between attempts (its message is
    /// handed back): an unload or a reload never waits out the patience.
    async fn keep_patiently(
        &self,
        letters: &LetterBucket,
        patience: Duration,
        mut stopping: watch::Receiver<bool>,
    ) -> Result<(), String> {
        const ATTEMPT: Duration = Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + patience;
        let mut wait = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error = match tokio::time::timeout(left.min(ATTEMPT), self.keep(letters)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => format!("bucket `{}`: no answer within {:?}", letters.name(), left.min(ATTEMPT)),
            };
            if tokio::time::Instant::now() + wait >= deadline {
                return Err(format!("{error} (tried for {patience:?})"));
            }
            if *stopping.borrow() {
                return Err(format!("{error} (the consumer is stopping)"));
            }
            tracing::warn!(plugin = self.plugin, stream_seq = self.seq, error = %error, retry_in = ?wait, "storing a dead letter failed; trying again");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopping.changed() => return Err(format!("{error} (the consumer is stopping)")),
            }
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

/// How long one pull request waits on the server: re-issued this often even
/// when nothing is lost, a handful of tiny requests a minute per consumer.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// How soon a pull that could not start (the server away) is tried again.
const PULL_RETRY: Duration = Duration::from_secs(1);

/// The first wait before binding a consumer whose pull ended (deleted on the
/// server) again; it doubles after each failed attempt, up to
/// [`REBIND_MAX`].
const REBIND_BASE: Duration = Duration::from_millis(500);

/// The longest wait between two attempts to bind a lost consumer again.
const REBIND_MAX: Duration = Duration::from_secs(30);

/// How many events that failed transiently on this host a consumer
/// remembers (their stream sequences): far more than can be in flight
/// between a failure and its redelivery.
const TRANSIENT_KEPT: usize = 4096;

/// The stream sequences of the last [`TRANSIENT_KEPT`] events that failed
/// transiently (a deadline, a host error) on this host: a second transient
/// failure of one of them is poison (`Term`), while a redelivery for any
/// other reason (a queue-full or quarantine `Nak`, a host that died, a
/// follow-up not stored) followed by a first transient failure is not.
#[derive(Default)]
pub(crate) struct TransientFailures {
    seqs: HashSet<u64>,
    order: VecDeque<u64>,
}

impl TransientFailures {
    /// Records a transient failure of the event at stream sequence `seq`:
    /// true when it had failed transiently here before.
    pub(crate) fn failed(&mut self, seq: u64) -> bool {
        if !self.seqs.insert(seq) {
            return true;
        }
        self.order.push_back(seq);
        if self.order.len() > TRANSIENT_KEPT
            && let Some(oldest) = self.order.pop_front()
        {
            self.seqs.remove(&oldest);
        }
        false
    }
}

/// The next message of the pull, or never when there is none.
async fn next_message(messages: &mut Option<pull::Stream>) -> Option<Result<jetstream::Message, pull::MessagesError>> {
    match messages {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

/// The Nak delay for a message delivered `delivered` times.
pub(crate) fn backoff(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 5)).unwrap_or(5);
    (NAK_BASE * 2u32.pow(doublings)).min(NAK_MAX)
}

/// How to acknowledge a message (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handled: `Ack`.
    Ack,
    /// Not handled here: redeliver after the delay (`Nak`).
    Nak(Duration),
    /// Never to be handled: `Term`.
    Term,
}

/// A hard failure the same event would cause again: a wasm plugin is
/// deterministic (its state was restored), so only the wall clock and the
/// host's own errors depend on the moment.
fn deterministic(failure: &Failure) -> bool {
    match failure {
        Failure::Panic(_) | Failure::OutOfFuel | Failure::MemoryLimit | Failure::StackOverflow | Failure::Trap(_) => {
            true
        }
        Failure::Deadline | Failure::Host(_) => false,
    }
}

/// The acknowledgement of a message delivered `delivered` times whose
/// handling ended with `outcome` (`None`: the worker went away) and whose
/// follow-ups' storing ended with `follow_ups`; `quarantine_left` is how
/// long the plugin stays quarantined; `failed_before`: the event had
/// already failed transiently on this host ([`TransientFailures`]). A
/// redelivery alone says nothing: it may follow a queue-full or quarantine
/// `Nak`, or a host that died.
pub(crate) fn verdict(
    outcome: Option<&Outcome>,
    follow_ups: &Result<usize, NotStored>,
    delivered: i64,
    quarantine_left: Option<Duration>,
    failed_before: bool,
) -> Verdict {
    let later = Verdict::Nak(backoff(delivered));
    match outcome {
        Some(Outcome::Ok | Outcome::Error(_)) => match follow_ups {
            Ok(_) => Verdict::Ack,
            Err(_) => later,
        },
        Some(Outcome::Failed(f)) if deterministic(f) || failed_before => Verdict::Term,
        Some(Outcome::Failed(_)) => later,
        Some(Outcome::Dropped(DropReason::Quarantined)) => {
            Verdict::Nak(quarantine_left.unwrap_or_default().max(backoff(delivered)))
        }
        Some(Outcome::Dropped(DropReason::QueueFull | DropReason::Unloaded | DropReason::Deferred)) | None => later,
    }
}

/// A message this host took and has not acknowledged yet.
struct Held {
    message: jetstream::Message,
    taken: tokio::time::Instant,
    delivered: i64,
    seq: u64,
}

/// What became of a held message: its token, its outcome, its follow-ups'
/// storing, and what [`Settling`] worked out before the acknowledgement.
type Done = (u64, Option<Outcome>, Result<usize, NotStored>, Settling);

/// Worked out for a held message beside the loop (so a slow store never
/// holds up the other messages' pulls, acks and progress words).
struct Settling {
    /// A transient failure of an event that already failed transiently here.
    failed_before: bool,
    /// Whether its dead letter was stored, when the message ends (`Term`)
    /// or is given up after this delivery; `None` when it does neither.
    letter: Option<Result<(), String>>,
}

/// Whether a message delivered `delivered` times is at its last delivery:
/// the server gives it up after this one's `Nak` (`max_deliver` ≤ 0: never).
fn last_delivery(delivered: i64, max_deliver: i64) -> bool {
    max_deliver > 0 && delivered >= max_deliver
}

/// How long storing one dead letter is tried before the message is handed
/// back (`Nak`) instead of ended: four times `ack_wait`, between 2 s and
/// 10 s: long enough to ride out a server restart; bounded, so a bucket
/// that never answers costs each poison event that long, not for ever, and
/// short, since it adds to the time a redelivered parent's follow-ups must
/// stay within the stream's duplicate window (`nats::redelivery_gap`).
pub(crate) fn letter_patience(ack_wait: Duration) -> Duration {
    ack_wait
        .saturating_mul(4)
        .clamp(Duration::from_secs(2), Duration::from_secs(10))
}

/// Tells the server that every message held for `at_least` or longer is
/// still in progress (`+WPI`), so it is not given to another host.
async fn in_progress(held: &HashMap<u64, Held>, at_least: Duration) {
    for h in held.values().filter(|h| h.taken.elapsed() >= at_least) {
        if crate::failpoint::hit("nats.progress").is_err() {
            continue;
        }
        // A lost progress ack means a redelivery at worst: at least once.
        let _ = h.message.ack_with(AckKind::Progress).await;
    }
}

/// The durable consumer name of plugin `plugin` (a `.` would be a subject
/// separator in the server's API subjects), and of its partition's consumer
/// when it is ordered.
pub(crate) fn durable_name(plugin: &str, partition: Option<u32>) -> String {
    match partition {
        None => format!("plugbus-{}", plugin.replace('.', "_")),
        Some(p) => format!("plugbus-{}-p{p}", plugin.replace('.', "_")),
    }
}

/// The subject filter and `max_ack_pending` of a consumer for `patterns`
/// (of `partition`, when ordered: one message in flight).
pub(crate) fn shape(patterns: &[Pattern], partition: Option<u32>, capacity: usize) -> (String, usize) {
    let filter = match patterns {
        [one] => wire::filter_in(Some(one.as_str()), partition),
        _ => wire::filter_in(None, partition),
    };
    (filter, if partition.is_some() { 1 } else { capacity })
}

/// A hot reload that changed what the plugin's consumer must be (its
/// filter, its `max_ack_pending`, or ordered or not): the consumer is
/// updated on the server, or re-created after its acknowledged floor when
/// the server cannot update it (a filter, on 2.9).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Reshape {
    /// Where a consumer that does not exist yet starts (the previous
    /// consumers' acknowledged floor + 1): nothing the previous version's
    /// consumer had not acknowledged is skipped.
    pub from: Option<u64>,
}

/// Creates (or binds to) plugin `plugin`'s consumer, then starts pulling
/// for it: once this returns, every event published next reaches the
/// plugin. `replay_all`: a new consumer starts at the first retained message
/// instead of the next one. `partition`: an ordered plugin's consumer of
/// that partition, with one message in flight over all hosts (`capacity` 1).
/// `reshape`: a hot reload changed the consumer this plugin needs.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    js: jetstream::Context,
    options: &NatsOptions,
    plugin: &str,
    partition: Option<u32>,
    patterns: Vec<Pattern>,
    capacity: usize,
    replay_all: bool,
    reshape: Option<Reshape>,
    port: Weak<dyn NatsPort>,
    publisher: Arc<Publisher>,
    letters: Arc<LetterBucket>,
) -> ConsumerHandle {
    let (stop, stopping) = watch::channel(false);
    let name = durable_name(plugin, partition);
    let stats = Arc::new(Mutex::new(ConsumerStats {
        consumer: name.clone(),
        ..ConsumerStats::default()
    }));
    let (filter, capacity) = shape(&patterns, partition, capacity);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: filter,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: options.max_deliver,
        // The server never hands this consumer more than its plugin's
        // queue holds, summed over hosts.
        max_ack_pending: capacity as i64,
        deliver_policy: if replay_all {
            jetstream::consumer::DeliverPolicy::All
        } else {
            jetstream::consumer::DeliverPolicy::New
        },
        ..pull::Config::default()
    };
    let durable = name.clone();
    let shape = (config.filter_subject.clone(), capacity);
    let run = Run {
        js,
        stream: options.stream.clone(),
        name,
        plugin: plugin.to_owned(),
        patterns: Mutex::new((patterns.iter().map(|p| p.as_str().to_owned()).collect(), patterns)),
        transient: Arc::new(Mutex::new(TransientFailures::default())),
        capacity,
        config,
        port,
        publisher,
        letters,
        stats: stats.clone(),
    };
    if let Some(reshape) = reshape
        && let Err(reason) = run.reshape(reshape).await
    {
        tracing::error!(plugin, consumer = %durable, %reason, "cannot change the plugin's NATS consumer for its new version");
    }
    let (ended, alive) = Ending::new();
    match run.bind().await {
        Ok(consumer) => {
            tokio::spawn(async move {
                let _alive = alive;
                run.run(consumer, stopping).await;
            });
        }
        Err(reason) => {
            tracing::error!(plugin, %reason, "the plugin's NATS consumer does not run");
            run.record(|s| s.error = Some(reason));
        }
    }
    ConsumerHandle {
        name: durable,
        shape,
        stop,
        ended,
        stats,
    }
}

struct Run {
    js: jetstream::Context,
    stream: String,
    /// The durable consumer's name.
    name: String,
    plugin: String,
    /// The running version's subscriptions as last seen (each message is
    /// matched against the version it is offered to), and parsed.
    patterns: Mutex<(Vec<String>, Vec<Pattern>)>,
    /// Events that failed transiently here (see [`verdict`]).
    transient: Arc<Mutex<TransientFailures>>,
    capacity: usize,
    config: pull::Config,
    port: Weak<dyn NatsPort>,
    publisher: Arc<Publisher>,
    /// The stream's dead letters.
    letters: Arc<LetterBucket>,
    stats: Arc<Mutex<ConsumerStats>>,
}

impl Run {
    fn record(&self, f: impl FnOnce(&mut ConsumerStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// While the plugin is quarantined here: how long it stays so.
    fn paused(&self) -> Option<Duration> {
        self.port.upgrade()?.quarantine_left(&self.plugin)
    }

    /// Starts pulling: pull requests of up to the plugin's capacity, with
    /// an idle heartbeat.
    async fn pull(&self, consumer: &jetstream::consumer::Consumer<pull::Config>) -> Option<pull::Stream> {
        let batch = self.capacity.clamp(1, 256);
        let pull = consumer
            .stream()
            .max_messages_per_batch(batch)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await;
        match pull {
            Ok(m) => {
                self.record(|s| s.error = None);
                Some(m)
            }
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, consumer = %self.name, error = %e, "cannot pull from NATS; retrying");
                self.record(|s| s.error = Some(format!("cannot pull: {e}")));
                None
            }
        }
    }

    async fn run(self, mut consumer: jetstream::consumer::Consumer<pull::Config>, mut stopping: watch::Receiver<bool>) {
        // `None` while the plugin is quarantined (or a pull could not
        // start): no pull request is out, so the server hands this host
        // nothing it would only hold or hand back.
        let mut messages = self.pull(&consumer).await;
        // What is awaited for each held message (its outcome, then its
        // follow-ups' store acks), tagged with its token; the messages
        // themselves, by token.
        let mut done = FuturesUnordered::new();
        let mut held: HashMap<u64, Held> = HashMap::new();
        let mut next_token = 0u64;
        // A handler (or a queue) slower than `ack_wait` must not make the
        // server give the event to another host: four times per `ack_wait`,
        // every message held longer than a quarter of it is said to be in
        // progress (so the first word goes out before half of it).
        let every = (self.config.ack_wait / 4).max(Duration::from_millis(25));
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set when the pull ended (the consumer was deleted on the server):
        // when to bind it again, and the wait after that attempt.
        let mut lost: Option<(tokio::time::Instant, Duration)> = None;
        loop {
            if let Some((at, wait)) = lost
                && tokio::time::Instant::now() >= at
            {
                match self.bind().await {
                    Ok(bound) => {
                        tracing::info!(plugin = %self.plugin, consumer = %self.name, "NATS consumer bound again; pulling");
                        consumer = bound;
                        lost = None;
                    }
                    Err(reason) => {
                        tracing::warn!(plugin = %self.plugin, consumer = %self.name, %reason, retry_in = ?wait, "cannot bind the NATS consumer again");
                        self.record(|s| s.error = Some(reason));
                        lost = Some((tokio::time::Instant::now() + wait, (wait * 2).min(REBIND_MAX)));
                    }
                }
            }
            // A quarantined plugin takes nothing: what the server would hand
            // this host goes to another one (or waits), instead of coming
            // back Nak'd at once and burning its deliveries.
            let paused = self.paused();
            if paused.is_some() != self.stats.lock().unwrap_or_else(|e| e.into_inner()).paused {
                tracing::info!(plugin = %self.plugin, consumer = %self.name, paused = paused.is_some(), "quarantine: pulling {}", if paused.is_some() { "stopped" } else { "resumed" });
                self.record(|s| s.paused = paused.is_some());
            }
            if paused.is_some() {
                // What the dropped pull already took comes back after
                // `ack_wait`, to whichever host pulls then.
                messages = None;
            } else if messages.is_none() && lost.is_none() {
                messages = self.pull(&consumer).await;
            }
            let pulling = messages.is_some();
            tokio::select! {
                biased;
                _ = stopping.changed() => break,
                Some(finished) = done.next(), if !done.is_empty() => self.settle(&mut held, finished).await,
                next = next_message(&mut messages), if held.len() < self.capacity && pulling => match next {
                    Some(Ok(message)) => {
                        let (seq, delivered) = match message.info() {
                            Ok(info) => (info.stream_sequence, info.delivered),
                            Err(_) => (0, 1),
                        };
                        if let Some(outcome) = self.take(&message, seq, delivered).await {
                            let payload = message.payload.clone();
                            next_token += 1;
                            let token = next_token;
                            held.insert(token, Held { message, taken: tokio::time::Instant::now(), delivered, seq });
                            let follow_ups = self.publisher.clone();
                            let plugin = self.plugin.clone();
                            let transient = self.transient.clone();
                            let letters = self.letters.clone();
                            let (max_deliver, ack_wait) = (self.config.max_deliver, self.config.ack_wait);
                            let stop = stopping.clone();
                            done.push(async move {
                                let outcome = outcome.await.ok();
                                // The follow-ups were handed over before the
                                // outcome came: their store acks, or why not.
                                let stored = follow_ups.follow_ups_of(&plugin, seq).await;
                                let failed_before = match &outcome {
                                    Some(Outcome::Failed(f)) if !deterministic(f) && seq > 0 => {
                                        transient.lock().unwrap_or_else(|e| e.into_inner()).failed(seq)
                                    }
                                    _ => false,
                                };
                                // Ended here, or given up by the server after
                                // this delivery's `Nak` (quarantine only
                                // changes a `Nak`'s delay): its letter first.
                                let letter = match verdict(outcome.as_ref(), &stored, delivered, None, failed_before) {
                                    Verdict::Term => true,
                                    Verdict::Nak(_) => last_delivery(delivered, max_deliver),
                                    Verdict::Ack => false,
                                };
                                let letter = if letter {
                                    let of = LetterOf {
                                        plugin: &plugin,
                                        payload: &payload,
                                        seq,
                                        delivered,
                                        outcome: outcome.as_ref(),
                                        stored: &stored,
                                    };
                                    Some(of.keep_patiently(&letters, letter_patience(ack_wait), stop).await)
                                } else {
                                    None
                                };
                                (token, outcome, stored, Settling { failed_before, letter })
                            });
                        }
                    }
                    Some(Err(e)) => {
                        // The client reconnects by itself (and re-issues a
                        // pull whose heartbeats stopped); the stream keeps
                        // what was not acknowledged.
                        tracing::warn!(plugin = %self.plugin, consumer = %self.name, error = %e, "pulling from NATS failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    None => {
                        // The pull ended: the consumer is gone on the
                        // server (deleted by an operator, or by another
                        // host re-creating it). Bind (create) it again,
                        // with a backoff, until the host stops.
                        let reason = format!("the pull from consumer `{}` ended (deleted on the server?); binding it again", self.name);
                        tracing::error!(plugin = %self.plugin, consumer = %self.name, "{reason}");
                        self.record(|s| s.error = Some(reason));
                        messages = None;
                        lost = Some((tokio::time::Instant::now() + REBIND_BASE, REBIND_BASE * 2));
                    }
                },
                // Until the quarantine ends, a pull that failed to start is
                // tried again, or a lost consumer is bound again.
                _ = tokio::time::sleep(match lost {
                    Some((at, _)) => at.saturating_duration_since(tokio::time::Instant::now()),
                    None => paused.unwrap_or(PULL_RETRY),
                }), if !pulling => {}
                _ = progress.tick(), if !held.is_empty() => in_progress(&held, every).await,
            }
        }
        // Stop pulling; what is in flight finishes (the worker drains its
        // queue) and is acknowledged by its outcome.
        drop(messages);
        while !done.is_empty() {
            tokio::select! {
                Some(finished) = done.next() => self.settle(&mut held, finished).await,
                _ = progress.tick() => in_progress(&held, every).await,
            }
        }
    }

    /// After a hot reload changed the consumer this plugin needs: makes the
    /// server's consumer this version's. One that exists with the same
    /// filter is updated in place (its position kept); one with another
    /// filter (or that the server does not update) is deleted and created
    /// again from just after its acknowledged floor: an in-place filter
    /// change would keep the position, past the events the old filter
    /// skipped but the new one matches. One that does not exist yet starts
    /// at `reshape.from` (after the previous consumers' floor). Other hosts
    /// still on the previous version then report their consumer as
    /// configured differently until they run this one.
    async fn reshape(&self, reshape: Reshape) -> Result<(), String> {
        let name = &self.name;
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("stream `{}`: {e}", self.stream))?;
        let want = &self.config;
        let from = match stream.consumer_info(name).await {
            Ok(info) => {
                let have = &info.config;
                if have.filter_subject == want.filter_subject
                    && have.ack_policy == want.ack_policy
                    && have.max_ack_pending == want.max_ack_pending
                    && have.ack_wait == want.ack_wait
                    && have.max_deliver == want.max_deliver
                {
                    return Ok(());
                }
                if have.filter_subject == want.filter_subject {
                    // The update keeps the consumer's own start.
                    let update = pull::Config {
                        deliver_policy: have.deliver_policy,
                        ..want.clone()
                    };
                    match stream.create_consumer(update).await {
                        Ok(_) => {
                            tracing::info!(plugin = %self.plugin, consumer = %name, max_ack_pending = want.max_ack_pending, "NATS consumer updated for the plugin's new version");
                            return Ok(());
                        }
                        Err(e) => {
                            tracing::warn!(plugin = %self.plugin, consumer = %name, error = %e, "the server cannot update the NATS consumer; re-creating it after its acknowledged floor");
                        }
                    }
                }
                stream
                    .delete_consumer(name)
                    .await
                    .map_err(|e| format!("deleting consumer `{name}`: {e}"))?;
                info.ack_floor.stream_sequence + 1
            }
            Err(_) => match reshape.from {
                Some(from) => from,
                // Created by `bind` as for a new plugin.
                None => return Ok(()),
            },
        };
        let config = pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from.max(1),
            },
            ..want.clone()
        };
        stream
            .create_consumer(config)
            .await
            .map_err(|e| format!("creating consumer `{name}`: {e}"))?;
        tracing::info!(plugin = %self.plugin, consumer = %name, filter = %want.filter_subject, from_stream_seq = from, "NATS consumer created for the plugin's new version");
        Ok(())
    }

    /// Creates or binds the durable consumer, refusing one whose server-side
    /// configuration differs from what this host asks for.
    async fn bind(&self) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("stream `{}`: {e}", self.stream))?;
        let name = &self.name;
        let mut consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(name, self.config.clone())
            .await
            .map_err(|e| format!("consumer `{name}`: {e}"))?;
        let info = consumer.info().await.map_err(|e| format!("consumer `{name}`: {e}"))?;
        let have = &info.config;
        let want = &self.config;
        let mut differ = Vec::new();
        // Each message acknowledged on its own: under `all`, one ack covers
        // every message before it, so a message a host died holding is
        // never redelivered once another host acks a later one (lost);
        // under `none` nothing is ever redelivered.
        if have.ack_policy != want.ack_policy {
            differ.push(format!(
                "ack_policy {:?} (asked {:?}: each message acknowledged on its own)",
                have.ack_policy, want.ack_policy
            ));
        }
        if have.filter_subject != want.filter_subject {
            differ.push(format!(
                "filter_subject `{}` (asked `{}`)",
                have.filter_subject, want.filter_subject
            ));
        }
        if have.ack_wait != want.ack_wait {
            differ.push(format!("ack_wait {:?} (asked {:?})", have.ack_wait, want.ack_wait));
        }
        if have.max_deliver != want.max_deliver {
            differ.push(format!("max_deliver {} (asked {})", have.max_deliver, want.max_deliver));
        }
        if have.max_ack_pending != want.max_ack_pending {
            differ.push(format!(
                "max_ack_pending {} (asked {})",
                have.max_ack_pending, want.max_ack_pending
            ));
        }
        if differ.is_empty() {
            Ok(consumer)
        } else {
            Err(format!(
                "consumer `{name}` exists on the server with a different configuration: {}; \
                 delete it (or make the hosts agree) to use it",
                differ.join(", ")
            ))
        }
    }

    /// Offers one message to the plugin: its outcome to come, or `None`
    /// when it was settled at once.
    async fn take(&self, message: &jetstream::Message, seq: u64, delivered: i64) -> Option<oneshot::Receiver<Outcome>> {
        if delivered > 1 {
            self.record(|s| s.redelivered += 1);
        }
        let event = match wire::decode(&message.payload, seq) {
            Ok(event) => event,
            Err(reason) => {
                tracing::error!(plugin = %self.plugin, stream_seq = seq, %reason, "unreadable message on the stream; terminated");
                self.ack(message, AckKind::Term).await;
                self.record(|s| s.terminated += 1);
                return None;
            }
        };
        // The subject routed it to the consumers whose filters match its
        // name: one whose body names another event (written by something
        // other than plugbus) reached the wrong plugins and would pass the
        // right ones by. Ended, named, like any unreadable message.
        if let Err(reason) = wire::check_subject(message.subject.as_str(), event.name()) {
            tracing::error!(plugin = %self.plugin, stream_seq = seq, %reason, "message on the wrong subject; terminated");
            self.ack(message, AckKind::Term).await;
            self.record(|s| s.terminated += 1);
            return None;
        }
        let Some(port) = self.port.upgrade() else {
            return self.not_loaded(message, delivered).await;
        };
        let (reply, outcome) = oneshot::channel();
        let name = event.name().to_owned();
        // Matched against the version the event is offered to (its current
        // subscriptions, after any hot reload), parsed again only when they
        // changed.
        let mut subscribed = |subscriptions: &[String]| {
            let mut seen = self.patterns.lock().unwrap_or_else(|e| e.into_inner());
            if seen.0 != subscriptions {
                seen.1 = subscriptions.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
                seen.0 = subscriptions.to_vec();
            }
            seen.1.iter().any(|p| p.matches(&name))
        };
        let job = Job {
            event,
            reply: Some(reply),
        };
        match port.offer(&self.plugin, job, &mut subscribed) {
            Offered::Queued => Some(outcome),
            Offered::NotSubscribed => {
                self.ack(message, AckKind::Ack).await;
                None
            }
            Offered::NotLoaded => self.not_loaded(message, delivered).await,
        }
    }

    /// Not loaded here (any more): someone else takes it.
    async fn not_loaded(&self, message: &jetstream::Message, delivered: i64) -> Option<oneshot::Receiver<Outcome>> {
        self.ack(message, AckKind::Nak(Some(backoff(delivered)))).await;
        self.record(|s| s.nakked += 1);
        None
    }

    /// Acknowledges a held message by its outcome and its follow-ups.
    async fn settle(&self, held: &mut HashMap<u64, Held>, (token, outcome, stored, settling): Done) {
        let Some(h) = held.remove(&token) else { return };
        let mut verdict = verdict(
            outcome.as_ref(),
            &stored,
            h.delivered,
            self.paused(),
            settling.failed_before,
        );
        if let Err(reason) = &stored {
            tracing::error!(plugin = %self.plugin, stream_seq = h.seq, delivered = h.delivered, %reason, ?verdict, "a follow-up of this event is not in the stream; the event is not acknowledged");
        }
        match settling.letter {
            None => {}
            Some(Ok(())) => {
                self.record(|s| s.dead_letters += 1);
                if verdict != Verdict::Term {
                    tracing::warn!(plugin = %self.plugin, stream_seq = h.seq, delivered = h.delivered, "the server gives this event up after this delivery; kept as a dead letter");
                }
            }
            Some(Err(reason)) => {
                self.record(|s| s.dead_letters_not_stored += 1);
                let last = last_delivery(h.delivered, self.config.max_deliver);
                if verdict == Verdict::Term {
                    // Handed back, never ended without a letter: it comes
                    // back, or after its last delivery the server gives it
                    // up and its MAX_DELIVERIES advisory tries the letter again.
                    verdict = Verdict::Nak(backoff(h.delivered));
                }
                if last {
                    tracing::error!(plugin = %self.plugin, stream_seq = h.seq, delivered = h.delivered, %reason, "the server gives this event up after this delivery and its dead letter could not be stored (the MAX_DELIVERIES advisory tries again)");
                } else {
                    tracing::error!(plugin = %self.plugin, stream_seq = h.seq, delivered = h.delivered, %reason, "the event's dead letter could not be stored; not ended (Nak): it comes back");
                }
            }
        }
        if verdict == Verdict::Term
            && let Some(Outcome::Failed(f)) = &outcome
        {
            tracing::warn!(plugin = %self.plugin, stream_seq = h.seq, delivered = h.delivered, failure = f.kind(), "event terminated on NATS after a hard failure; kept as a dead letter");
        }
        let kind = match verdict {
            Verdict::Ack => AckKind::Ack,
            Verdict::Nak(delay) => AckKind::Nak(Some(delay)),
            Verdict::Term => AckKind::Term,
        };
        self.ack(&h.message, kind).await;
        if verdict == Verdict::Ack && h.delivered > 1 {
            // Handled on a redelivery: a letter an earlier delivery kept (its
            // store landed though it seemed to fail, so it was handed back)
            // names an event handled now, and a redrive would apply it again.
            let (letters, plugin, payload, seq) = (
                self.letters.clone(),
                self.plugin.clone(),
                h.message.payload.clone(),
                h.seq,
            );
            tokio::spawn(async move {
                let Ok(event) = wire::decode(&payload, seq) else { return };
                if let Err(e) = letters.remove(&plugin, event.id()).await {
                    tracing::warn!(plugin = %plugin, stream_seq = seq, error = %e, "cannot remove the dead letter of an event handled on its redelivery");
                }
            });
        }
        let not_stored = stored.is_err() && matches!(verdict, Verdict::Nak(_));
        self.record(|s| match verdict {
            Verdict::Ack => s.acked += 1,
            Verdict::Term => s.terminated += 1,
            Verdict::Nak(_) => {
                s.nakked += 1;
                s.follow_ups_not_stored += u64::from(not_stored);
            }
        });
    }

    async fn ack(&self, message: &jetstream::Message, kind: AckKind) {
        let point = match kind {
            AckKind::Ack => "nats.ack",
            AckKind::Nak(_) => "nats.nak",
            AckKind::Term => "nats.term",
            _ => "nats.progress",
        };
        // A failpoint that fails is a lost ack: the message comes back.
        if let Err(e) = crate::failpoint::hit(point) {
            tracing::warn!(plugin = %self.plugin, error = %e, "acknowledgement not sent");
            return;
        }
        // A lost ack means a redelivery after `ack_wait`: at least once.
        if let Err(e) = message.ack_with(kind).await {
            tracing::warn!(plugin = %self.plugin, error = %e, "acknowledging to NATS failed; the message will be redelivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: Result<usize, NotStored> = Ok(1);

    #[test]
    fn the_ack_table() {
        let first = Verdict::Nak(NAK_BASE);
        assert_eq!(verdict(Some(&Outcome::Ok), &STORED, 1, None, false), Verdict::Ack);
        assert_eq!(
            verdict(Some(&Outcome::Error("no".into())), &STORED, 3, None, false),
            Verdict::Ack
        );
        let lost = Err(NotStored::TooLarge("big".into()));
        assert_eq!(verdict(Some(&Outcome::Ok), &lost, 1, None, false), first);
        assert_eq!(
            verdict(Some(&Outcome::Ok), &Err(NotStored::QueueFull), 2, None, false),
            Verdict::Nak(NAK_BASE * 2)
        );
        for f in [
            Failure::OutOfFuel,
            Failure::Trap("t".into()),
            Failure::Panic("p".into()),
            Failure::MemoryLimit,
            Failure::StackOverflow,
        ] {
            assert_eq!(
                verdict(Some(&Outcome::Failed(f)), &STORED, 1, None, false),
                Verdict::Term
            );
        }
        for f in [Failure::Deadline, Failure::Host("h".into())] {
            assert_eq!(
                verdict(Some(&Outcome::Failed(f.clone())), &STORED, 1, None, false),
                first,
                "{f}"
            );
            // Failed transiently here before: poison.
            assert_eq!(
                verdict(Some(&Outcome::Failed(f)), &STORED, 2, None, true),
                Verdict::Term
            );
        }
        let quarantined = Outcome::Dropped(DropReason::Quarantined);
        assert_eq!(
            verdict(Some(&quarantined), &STORED, 1, Some(Duration::from_secs(3)), false),
            Verdict::Nak(Duration::from_secs(3))
        );
        assert_eq!(verdict(Some(&quarantined), &STORED, 1, None, false), first);
        assert_eq!(
            verdict(Some(&Outcome::Dropped(DropReason::Unloaded)), &STORED, 1, None, false),
            first
        );
        assert_eq!(verdict(None, &STORED, 1, None, false), first);
    }

    /// A redelivery for another reason (a queue-full or quarantine `Nak`, a
    /// host that died, a follow-up not stored) followed by a first transient
    /// failure is `Nak`'d, not terminated: only a second transient failure
    /// of the same event here is poison.
    #[test]
    fn a_first_transient_failure_on_a_redelivery_is_nakked_and_a_second_terminated() {
        let mut failures = TransientFailures::default();
        for f in [Failure::Deadline, Failure::Host("h".into())] {
            let seq = if f == Failure::Deadline { 7 } else { 8 };
            // Delivered a third time (two queue-full Naks before), failing
            // for the first time.
            let before = failures.failed(seq);
            assert!(!before);
            assert_eq!(
                verdict(Some(&Outcome::Failed(f.clone())), &STORED, 3, None, before),
                Verdict::Nak(NAK_BASE * 4),
                "{f}"
            );
            // Its next delivery fails again: terminated.
            let before = failures.failed(seq);
            assert!(before);
            assert_eq!(
                verdict(Some(&Outcome::Failed(f.clone())), &STORED, 4, None, before),
                Verdict::Term
            );
        }
        // Bounded: the oldest are forgotten.
        for seq in 100..100 + TRANSIENT_KEPT as u64 {
            failures.failed(seq);
        }
        assert!(!failures.failed(7));
        assert!(failures.failed(100 + TRANSIENT_KEPT as u64 - 1));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), NAK_BASE);
        assert_eq!(backoff(1), NAK_BASE);
        assert_eq!(backoff(2), NAK_BASE * 2);
        assert_eq!(backoff(5), NAK_BASE * 16);
        assert_eq!(backoff(6), NAK_MAX);
        assert_eq!(backoff(1000), NAK_MAX);
    }
}
