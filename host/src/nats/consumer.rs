//! One plugin's durable pull consumer: every host that loads plugin `P`
//! pulls from `plugbus-P`, so the stream's events for `P` are shared between
//! hosts. A host holds at most the plugin's queue capacity of unacknowledged
//! messages (it never pulls what the plugin cannot queue), and maps each
//! outcome to an acknowledgement:
//!
//! | outcome | ack | why |
//! |---|---|---|
//! | ok, or the guest's `Err` | `Ack` | handled (an `Err` is the plugin's answer) |
//! | a hard failure (trap, fuel, deadline, memory) | `Term` | the worker already recovered the plugin and kept the event as a dead letter: redelivering a poison event would fail again |
//! | dropped (quarantined, unloaded, shutting down, queue full) | `Nak` | another host (or this one, later) takes it |
//! | an envelope that does not parse | `Term` | it can never be handled; logged with the stream sequence |
//! | an event the plugin's patterns do not match | `Ack` | the consumer's filter is wider than its patterns |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::bus::Shared;
use crate::nats::{NatsOptions, wire};
use crate::outcome::Outcome;
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
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub stats: Arc<Mutex<ConsumerStats>>,
}

impl ConsumerHandle {
    /// Tells the consumer to stop pulling, without waiting.
    pub fn signal(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops pulling, lets the in-flight events finish and acknowledges
    /// them, then returns.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// Tells the server that every message held for `at_least` or longer is
/// still in progress (`+WPI`), so it is not given to another host.
async fn in_progress(held: &HashMap<u64, (jetstream::Message, tokio::time::Instant)>, at_least: Duration) {
    for (message, _) in held.values().filter(|(_, taken)| taken.elapsed() >= at_least) {
        // A lost progress ack means a redelivery at worst: at least once.
        let _ = message.ack_with(AckKind::Progress).await;
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

/// Creates (or binds to) plugin `plugin`'s consumer, then starts pulling
/// for it: once this returns, every event published next reaches the
/// plugin. `replay_all`: a new consumer starts at the first retained message
/// instead of the next one. `partition`: an ordered plugin's consumer of
/// that partition, with one message in flight over all hosts (`capacity` 1).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    js: jetstream::Context,
    options: &NatsOptions,
    plugin: &str,
    partition: Option<u32>,
    patterns: Vec<Pattern>,
    capacity: usize,
    replay_all: bool,
    shared: Weak<Shared>,
) -> ConsumerHandle {
    let (stop, stopping) = watch::channel(false);
    let name = durable_name(plugin, partition);
    let stats = Arc::new(Mutex::new(ConsumerStats {
        consumer: name.clone(),
        ..ConsumerStats::default()
    }));
    let filter = match patterns.as_slice() {
        [one] => wire::filter_in(Some(one.as_str()), partition),
        _ => wire::filter_in(None, partition),
    };
    let capacity = if partition.is_some() { 1 } else { capacity };
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
    let run = Run {
        js,
        stream: options.stream.clone(),
        name,
        plugin: plugin.to_owned(),
        patterns,
        capacity,
        config,
        shared,
        stats: stats.clone(),
    };
    let task = match run.bind().await {
        Ok(consumer) => Some(tokio::spawn(run.run(consumer, stopping))),
        Err(reason) => {
            tracing::error!(plugin, %reason, "the plugin's NATS consumer does not run");
            run.record(|s| s.error = Some(reason));
            None
        }
    };
    ConsumerHandle {
        name: durable,
        stop,
        task: Mutex::new(task),
        stats,
    }
}

struct Run {
    js: jetstream::Context,
    stream: String,
    /// The durable consumer's name.
    name: String,
    plugin: String,
    patterns: Vec<Pattern>,
    capacity: usize,
    config: pull::Config,
    shared: Weak<Shared>,
    stats: Arc<Mutex<ConsumerStats>>,
}

impl Run {
    fn record(&self, f: impl FnOnce(&mut ConsumerStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    async fn run(self, consumer: jetstream::consumer::Consumer<pull::Config>, mut stopping: watch::Receiver<bool>) {
        let batch = self.capacity.clamp(1, 256);
        let mut messages = match consumer.stream().max_messages_per_batch(batch).messages().await {
            Ok(m) => m,
            Err(e) => {
                self.record(|s| s.error = Some(format!("cannot pull: {e}")));
                return;
            }
        };
        // The outcomes awaited, each tagged with its message's token; the
        // messages themselves, by token, with when they were taken.
        let mut outcomes = FuturesUnordered::new();
        let mut held: HashMap<u64, (jetstream::Message, tokio::time::Instant)> = HashMap::new();
        let mut next_token = 0u64;
        // A handler (or a queue) slower than `ack_wait` must not make the
        // server give the event to another host: four times per `ack_wait`,
        // every message held longer than a quarter of it is said to be in
        // progress (so the first word goes out before half of it).
        let every = (self.config.ack_wait / 4).max(Duration::from_millis(25));
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stopping.changed() => break,
                Some((token, outcome)) = outcomes.next(), if !outcomes.is_empty() => {
                    if let Some((message, _)) = held.remove(&token) {
                        self.settle(&message, outcome).await;
                    }
                }
                next = messages.next(), if held.len() < self.capacity => match next {
                    Some(Ok(message)) => {
                        if let Some(outcome) = self.take(&message).await {
                            next_token += 1;
                            let token = next_token;
                            held.insert(token, (message, tokio::time::Instant::now()));
                            outcomes.push(outcome.map(move |r| (token, r.ok())));
                        }
                    }
                    Some(Err(e)) => {
                        // The client reconnects by itself; the stream keeps
                        // what was not acknowledged.
                        tracing::warn!(plugin = %self.plugin, error = %e, "pulling from NATS failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    None => break,
                },
                _ = progress.tick(), if !held.is_empty() => in_progress(&held, every).await,
            }
        }
        // Stop pulling; what is in flight finishes (the worker drains its
        // queue) and is acknowledged by its outcome.
        drop(messages);
        while !outcomes.is_empty() {
            tokio::select! {
                Some((token, outcome)) = outcomes.next() => {
                    if let Some((message, _)) = held.remove(&token) {
                        self.settle(&message, outcome).await;
                    }
                }
                _ = progress.tick() => in_progress(&held, every).await,
            }
        }
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
    async fn take(&self, message: &jetstream::Message) -> Option<oneshot::Receiver<Outcome>> {
        let (seq, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(_) => (0, 1),
        };
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
        if !self.patterns.iter().any(|p| p.matches(event.name())) {
            self.ack(message, AckKind::Ack).await;
            return None;
        }
        let Some(shared) = self.shared.upgrade() else {
            self.ack(message, AckKind::Nak(None)).await;
            return None;
        };
        let (reply, outcome) = oneshot::channel();
        if !shared.offer_to(
            &self.plugin,
            Job {
                event,
                reply: Some(reply),
            },
        ) {
            // Not loaded here any more: someone else takes it.
            self.ack(message, AckKind::Nak(None)).await;
            self.record(|s| s.nakked += 1);
            return None;
        }
        Some(outcome)
    }

    async fn settle(&self, message: &jetstream::Message, outcome: Option<Outcome>) {
        // The event's follow-ups were queued for publishing before its
        // outcome came: acknowledge it only once they are in the stream, so
        // a host dying in between loses none (the event comes back, and
        // its follow-ups, published again, keep their ids).
        if let Some(shared) = self.shared.upgrade()
            && let Some(nats) = &shared.nats
        {
            let mark = nats.publisher.mark();
            nats.publisher.settled_through(mark).await;
        }
        let kind = match outcome {
            Some(Outcome::Ok | Outcome::Error(_)) => AckKind::Ack,
            Some(Outcome::Failed(_)) => AckKind::Term,
            Some(Outcome::Dropped(_)) | None => AckKind::Nak(None),
        };
        self.ack(message, kind).await;
        self.record(|s| match kind {
            AckKind::Ack => s.acked += 1,
            AckKind::Term => s.terminated += 1,
            _ => s.nakked += 1,
        });
    }

    async fn ack(&self, message: &jetstream::Message, kind: AckKind) {
        // A lost ack means a redelivery after `ack_wait`: at least once.
        if let Err(e) = message.ack_with(kind).await {
            tracing::warn!(plugin = %self.plugin, error = %e, "acknowledging to NATS failed; the message will be redelivered");
        }
    }
}
