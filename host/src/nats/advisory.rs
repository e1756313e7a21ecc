//! The server's word on messages it gave up or ended: the JetStream
//! advisories `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`
//! (a message delivered `max_deliver` times without an ack, never to come
//! back) and `…MSG_TERMINATED.<stream>.<consumer>` (a `Term`, by any host),
//! counted in the consumer's stats (`plugbus_nats_consumer_max_deliveries`,
//! `…_terminated_advisories`) and published as bus events
//! `plugbus.nats.max_deliveries` / `plugbus.nats.terminated`
//! (`{"plugin", "consumer", "stream_seq", "deliveries"}`).
//!
//! Every host that runs the consumer sees each advisory: each counts it,
//! and each publishes the event under one id derived from the advisory's,
//! so the stream stores it once.
//!
//! A given-up message is normally kept as a dead letter by the host that
//! `Nak`ed its last delivery (`nats::consumer`); when no host did (the last
//! delivery's host died and `ack_wait` ran out, or its store failed), the
//! hosts that see the advisory read the message from the stream and keep
//! its letter, so every event a plugin never handled has one.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream;

use futures_util::StreamExt;
use serde::Deserialize;

use crate::dead_letter::DeadLetter;
use crate::event::Event;
use crate::nats::dead_letters::LetterBucket;
use crate::nats::port::NatsPort;
use crate::nats::{Consumers, lock};

/// The fields of both advisories that matter here.
#[derive(Deserialize)]
struct Advisory {
    /// Unique per advisory: the announced event's id derives from it.
    id: String,
    consumer: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// Which advisory a message is.
#[derive(Clone, Copy)]
enum Kind {
    MaxDeliveries,
    Terminated,
}

impl Kind {
    fn event_name(self) -> &'static str {
        match self {
            Kind::MaxDeliveries => "plugbus.nats.max_deliveries",
            Kind::Terminated => "plugbus.nats.terminated",
        }
    }
}

/// How often the reader checks that its bus still exists while no
/// advisory comes (the subscription alone would keep it waiting forever).
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// Subscribes to both advisories of `stream` (before returning, so none
/// after the first consumer's start is missed) and reads them until the
/// bus drops its consumers.
pub(crate) async fn start(
    js: jetstream::Context,
    letters: Arc<LetterBucket>,
    stream: &str,
    consumers: Weak<std::sync::Mutex<ConsumersMap>>,
    port: Weak<dyn NatsPort>,
) {
    let client = js.client();
    let given_up = GivenUp {
        js,
        letters,
        stream: stream.to_owned(),
        handle: Arc::new(tokio::sync::OnceCell::new()),
        at_once: Arc::new(tokio::sync::Semaphore::new(GIVEN_UP_AT_ONCE)),
    };
    let mut subscriptions = Vec::new();
    for (kind, what) in [
        (Kind::MaxDeliveries, "MAX_DELIVERIES"),
        (Kind::Terminated, "MSG_TERMINATED"),
    ] {
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.{what}.{stream}.*");
        match client.subscribe(subject.clone()).await {
            Ok(sub) => subscriptions.push(sub.map(move |m| (kind, m))),
            Err(e) => {
                tracing::warn!(%subject, error = %e, "cannot subscribe to the NATS advisories; they are not counted")
            }
        }
    }
    let mut all = futures_util::stream::select_all(subscriptions);
    tokio::spawn(async move {
        loop {
            let next = tokio::time::timeout(ALIVE_EVERY, all.next()).await;
            let Some(consumers) = consumers.upgrade() else { return };
            match next {
                Ok(Some((kind, message))) => handle(kind, &message.payload, &consumers, &port, &given_up),
                Ok(None) => return,
                Err(_) => {}
            }
        }
    });
}

/// The consumers' map behind [`Consumers`].
pub(crate) type ConsumersMap = std::collections::BTreeMap<String, Vec<crate::nats::consumer::ConsumerHandle>>;

fn handle(kind: Kind, payload: &[u8], consumers: &Consumers, port: &Weak<dyn NatsPort>, given_up: &GivenUp) {
    let advisory: Advisory = match serde_json::from_slice(payload) {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(error = %e, "an advisory that does not parse; ignored");
            return;
        }
    };
    // Only this host's consumers: another plugin's advisory is not ours.
    let found = lock(consumers).iter().find_map(|(plugin, handles)| {
        handles
            .iter()
            .find(|h| h.name == advisory.consumer)
            .map(|h| (plugin.clone(), h.stats.clone()))
    });
    let Some((plugin, stats)) = found else { return };
    {
        let mut s = lock(&stats);
        match kind {
            Kind::MaxDeliveries => s.max_deliveries += 1,
            Kind::Terminated => s.terminated_advisories += 1,
        }
    }
    match kind {
        Kind::MaxDeliveries => {
            tracing::error!(plugin = %plugin, consumer = %advisory.consumer, stream_seq = advisory.stream_seq, deliveries = advisory.deliveries, "NATS gave the message up after its last delivery: not handled by this plugin");
            tokio::spawn(given_up.clone().keep(
                plugin.clone(),
                advisory.stream_seq,
                advisory.deliveries,
                stats.clone(),
            ));
        }
        Kind::Terminated => {
            tracing::info!(plugin = %plugin, consumer = %advisory.consumer, stream_seq = advisory.stream_seq, deliveries = advisory.deliveries, "NATS message terminated")
        }
    }
    if let Some(port) = port.upgrade() {
        let payload = serde_json::json!({
            "plugin": plugin,
            "consumer": advisory.consumer,
            "stream_seq": advisory.stream_seq,
            "deliveries": advisory.deliveries,
        });
        port.announce(Event::decoded(
            0,
            kind.event_name().to_owned(),
            format!("nats-advisory-{}", advisory.id),
            crate::event::now_nanos(),
            None,
            "plugbus".to_owned(),
            0,
            payload.to_string(),
        ));
    }
}

/// Given-up messages whose letters one host reads and keeps at once: these
/// come in bursts exactly when something is wrong (a server or host away),
/// and each costs a few round trips; the rest wait their turn.
const GIVEN_UP_AT_ONCE: usize = 4;

/// What a host needs to keep the dead letter of a message the server gave
/// up: the stream to read it from and the bucket to keep it in.
#[derive(Clone)]
struct GivenUp {
    js: jetstream::Context,
    letters: Arc<LetterBucket>,
    stream: String,
    /// The stream, looked up once.
    handle: Arc<tokio::sync::OnceCell<jetstream::stream::Stream>>,
    at_once: Arc<tokio::sync::Semaphore>,
}

impl GivenUp {
    /// Keeps the letter of the message at `seq`, unless `plugin` has, or
    /// had, one for its event (the last delivery's host kept it, or a
    /// redrive already handled it). A letter kept here may name an event
    /// whose last handling finished just after its `ack_wait` ran out: a
    /// redrive then handles it again (at least once).
    /// A letter that cannot be kept is counted in `stats`
    /// (`dead_letters_not_stored`), as the consumer counts its own.
    async fn keep(
        self,
        plugin: String,
        seq: u64,
        deliveries: u64,
        stats: Arc<std::sync::Mutex<crate::nats::consumer::ConsumerStats>>,
    ) {
        let not_stored = || lock(&stats).dead_letters_not_stored += 1;
        // Tried again for a minute: these advisories come exactly when the
        // server or a host is in trouble (a restart, a reconnect).
        const PATIENCE: Duration = Duration::from_secs(60);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut wait = Duration::from_millis(250);
        loop {
            // A permit per attempt, never held across the waits.
            let attempt = match self.at_once.acquire().await {
                Ok(_permit) => self.try_keep(&plugin, seq, deliveries).await,
                Err(_) => return,
            };
            match attempt {
                Ok(true) => {
                    tracing::warn!(plugin = %plugin, stream_seq = seq, "a message NATS gave up is kept as a dead letter");
                    return;
                }
                Ok(false) => return,
                Err(Attempt::Final(reason)) => {
                    tracing::error!(plugin = %plugin, stream_seq = seq, %reason, "the dead letter of a message NATS gave up cannot be kept");
                    not_stored();
                    return;
                }
                Err(Attempt::Again(reason)) if tokio::time::Instant::now() + wait >= deadline => {
                    tracing::error!(plugin = %plugin, stream_seq = seq, %reason, "the dead letter of a message NATS gave up could not be kept");
                    not_stored();
                    return;
                }
                Err(Attempt::Again(reason)) => {
                    tracing::warn!(plugin = %plugin, stream_seq = seq, %reason, retry_in = ?wait, "keeping the dead letter of a message NATS gave up failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One attempt: `Ok(false)` when the letter exists or existed.
    async fn try_keep(&self, plugin: &str, seq: u64, deliveries: u64) -> Result<bool, Attempt> {
        let stream = self
            .handle
            .get_or_try_init(|| async { self.js.get_stream(&self.stream).await })
            .await
            .map_err(|e| Attempt::Again(format!("stream `{}`: {e}", self.stream)))?;
        let message = stream.get_raw_message(seq).await.map_err(|e| {
            let reason = format!("stream `{}`, sequence {seq}: {e}", self.stream);
            // Removed by the stream's limits: it will not come back.
            if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound {
                Attempt::Final(reason)
            } else {
                Attempt::Again(reason)
            }
        })?;
        let event = crate::nats::wire::decode(&message.payload, seq).map_err(Attempt::Final)?;
        if self
            .letters
            .recorded(plugin, event.id())
            .await
            .map_err(Attempt::Again)?
        {
            return Ok(false);
        }
        let deliveries = i64::try_from(deliveries).unwrap_or(i64::MAX);
        let letter = DeadLetter::given_up(
            plugin,
            &event,
            deliveries,
            "no letter from the host of its last delivery (it went away, or its store failed)",
        );
        self.letters.keep(&letter).await.map_err(Attempt::Again)?;
        Ok(true)
    }
}

/// Why one attempt failed: worth trying again, or never.
enum Attempt {
    Again(String),
    Final(String),
}
