//! Publishing events into the stream without ever blocking `emit`: the emit
//! path hands each event to a bounded queue; one task publishes them with a
//! bounded window of unanswered publish acks, retrying a failed publish with
//! the same `Nats-Msg-Id` (so a retry that did reach the server is answered
//! "duplicate", not stored twice).
//!
//! It also answers, per event id, whether the stream stored an event
//! ([`Publisher::confirm`]) and, per handled message, whether every
//! follow-up it caused was stored ([`Publisher::track`],
//! [`Publisher::follow_ups_of`]): a consumer acknowledges an event only
//! then, so a follow-up that never reached the stream leaves its parent
//! unacknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishErrorKind},
    message::PublishMessage,
};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::event::Event;
use crate::nats::wire;

/// Publish attempts per event before it is counted as failed: with the
/// backoff below, about 3 s, enough to ride out a server restart's
/// reconnect without holding the window for long.
const ATTEMPTS: u32 = 5;

/// First retry delay; doubled for each further attempt.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// Counters of the publisher (`Bus::nats_status`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PublishStats {
    /// Events handed to the publisher.
    pub accepted: u64,
    /// Events the stream acknowledged (stored, or already stored).
    pub acked: u64,
    /// Of those, answered as duplicates (the id was already in the stream).
    pub duplicates: u64,
    /// Publish attempts that were retried.
    pub retries: u64,
    /// Events given up after every attempt failed: not in the stream.
    pub failed: u64,
    /// Events refused because the publish queue was full: not in the stream.
    pub dropped: u64,
    /// Events accepted and not yet acknowledged or given up.
    pub in_flight: u64,
}

/// Why an event is not in the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotStored {
    /// The publish queue was full: the event was dropped on this host.
    #[error("the NATS publish queue is full")]
    QueueFull,
    /// The bus was shut down before the event was published.
    #[error("the host is shutting down")]
    ShutDown,
    /// The server refuses a message this large (its `max_payload`, or the
    /// stream's `max_msg_size`): no retry can store it.
    #[error("too large for the NATS server: {0}")]
    TooLarge(String),
    /// Every publish attempt failed.
    #[error("every publish attempt failed: {0}")]
    Failed(String),
}

/// The stream's answer for one event: its stream sequence, or why it is not
/// in the stream.
pub(crate) type Answer = Result<u64, NotStored>;

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    acked: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    /// Accepted and not yet settled (acked or failed).
    outstanding: AtomicU64,
    settled: Notify,
    /// Callers waiting for particular events' acks, by event id; `waiting`
    /// says whether to look (the emit path never takes the lock otherwise).
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Answer>>>>,
    waiting: AtomicBool,
}

/// The stream's answer for one event, to await.
pub(crate) type Confirmation = oneshot::Receiver<Answer>;

/// The follow-ups awaited per handled message: (plugin, the parent's stream
/// sequence) → one confirmation per follow-up.
type Tracked = HashMap<(Arc<str>, u64), Vec<Confirmation>>;

/// The emit path's handle on the publisher task.
pub(crate) struct Publisher {
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    /// Held while an event is queued and counted, so the queue's order and
    /// the `accepted` count agree. Uncontended in the common case: one lock
    /// per publish.
    order: Mutex<()>,
    /// Follow-ups whose parent is not acknowledged yet.
    tracked: Mutex<Tracked>,
}

impl Publisher {
    /// Starts the publisher task on `runtime`: events queue up to `queue`,
    /// and at most `window` publishes wait for their ack at once.
    pub fn start(
        js: jetstream::Context,
        partitions: u32,
        queue: usize,
        window: usize,
        runtime: &tokio::runtime::Handle,
    ) -> Publisher {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let counters = Arc::new(Counters::default());
        runtime.spawn(run(js, rx, counters.clone(), partitions, window.max(1)));
        Publisher {
            tx,
            counters,
            order: Mutex::new(()),
            tracked: Mutex::new(HashMap::new()),
        }
    }

    /// Hands `event` to the publisher; never waits. A full queue drops it,
    /// counted and logged: never silently.
    pub fn publish(&self, event: &Event) {
        self.counters.outstanding.fetch_add(1, Relaxed);
        let sent = {
            let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
            let sent = self.tx.try_send(event.clone()).is_ok();
            if sent {
                self.counters.accepted.fetch_add(1, Relaxed);
            }
            sent
        };
        if !sent {
            let dropped = self.counters.dropped.fetch_add(1, Relaxed) + 1;
            self.counters.answer(event.id(), Err(NotStored::QueueFull));
            settle(&self.counters);
            // Once, then every 1024th: a storm would drown the log.
            if dropped == 1 || dropped.is_multiple_of(1024) {
                tracing::error!(
                    event = event.name(),
                    event_id = event.id(),
                    dropped,
                    "the NATS publish queue is full; event not published to the stream"
                );
            }
        }
    }

    /// Registers interest in `id`'s ack, before the event is published.
    pub fn confirm(&self, id: &str) -> Confirmation {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.counters.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.entry(id.to_owned()).or_default().push(tx);
        self.counters.waiting.store(true, Relaxed);
        rx
    }

    /// Answers whoever waits for `event` that it is not published (the bus
    /// refused it, say because it is shut down).
    pub fn refuse(&self, event: &Event, reason: NotStored) {
        self.counters.answer(event.id(), Err(reason));
    }

    /// Notes that plugin `plugin`, handling the message at stream sequence
    /// `parent_seq`, emitted the follow-up `id` (called before it is
    /// published): [`follow_ups_of`](Self::follow_ups_of) waits for it.
    pub fn track(&self, plugin: &Arc<str>, parent_seq: u64, id: &str) {
        let confirmation = self.confirm(id);
        self.tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((plugin.clone(), parent_seq))
            .or_default()
            .push(confirmation);
    }

    /// The follow-ups plugin `plugin` emitted while handling the message at
    /// `parent_seq` (all of them: the handler has finished), forgotten here;
    /// the future resolves once the stream answered for each.
    pub fn follow_ups_of(
        &self,
        plugin: &str,
        parent_seq: u64,
    ) -> impl Future<Output = Result<usize, NotStored>> + use<> {
        let key: (Arc<str>, u64) = (Arc::from(plugin), parent_seq);
        let confirmations = self
            .tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .unwrap_or_default();
        async move {
            let count = confirmations.len();
            for confirmation in confirmations {
                // A sender dropped unanswered: the publisher is gone.
                confirmation.await.unwrap_or(Err(NotStored::ShutDown))?;
            }
            Ok(count)
        }
    }

    /// Waits until every event handed over so far is acknowledged or given up.
    pub async fn flush(&self) {
        loop {
            let settled = self.counters.settled.notified();
            if self.counters.outstanding.load(Relaxed) == 0 {
                return;
            }
            settled.await;
        }
    }

    pub fn stats(&self) -> PublishStats {
        let c = &self.counters;
        PublishStats {
            accepted: c.accepted.load(Relaxed),
            acked: c.acked.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            retries: c.retries.load(Relaxed),
            failed: c.failed.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            in_flight: c.outstanding.load(Relaxed),
        }
    }
}

impl Counters {
    /// Tells whoever waits for event `id` how it went.
    fn answer(&self, id: &str, result: Answer) {
        if !self.waiting.load(Relaxed) || id.is_empty() {
            return;
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for tx in waiters.remove(id).unwrap_or_default() {
            let _ = tx.send(result.clone());
        }
        if waiters.is_empty() {
            self.waiting.store(false, Relaxed);
        }
    }
}

fn settle(counters: &Counters) {
    if counters.outstanding.fetch_sub(1, Relaxed) == 1 {
        counters.settled.notify_waiters();
    }
}

async fn run(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Event>,
    counters: Arc<Counters>,
    partitions: u32,
    window: usize,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            // Settle answers first: they free window slots.
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            next = rx.recv(), if open && in_flight.len() < window => match next {
                Some(event) => {
                    // Sent here, one after the other, so the stream stores
                    // one host's events in the order they were published;
                    // only the acks are awaited together.
                    let outgoing = Outgoing::new(event, partitions);
                    let first = outgoing.send(&js).await;
                    let counters = &counters;
                    let js = &js;
                    in_flight.push(outgoing.finish(js, first, counters));
                }
                None => open = false,
            },
        }
    }
}

/// Why the stream did not store a message it answered: `TooLarge` when the
/// stream's own `max_msg_size` refuses it (the JetStream error 10054, below
/// the server's `max_payload`, so the client sent it): no retry can store
/// it, so none is made. Any other answer may pass on a retry.
fn ack_refusal(e: &async_nats::jetstream::context::PublishError) -> NotStored {
    use async_nats::jetstream::ErrorCode;
    let refused = std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|js| js.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM);
    if refused {
        NotStored::TooLarge(format!("the stream's max_msg_size: {e}"))
    } else {
        NotStored::Failed(e.to_string())
    }
}

/// One event on its way to the stream.
struct Outgoing {
    event: Event,
    subject: String,
    body: bytes::Bytes,
}

impl Outgoing {
    fn new(event: Event, partitions: u32) -> Outgoing {
        Outgoing {
            subject: wire::subject_for(&event, partitions),
            body: bytes::Bytes::from(wire::encode(&event)),
            event,
        }
    }

    /// Sends the message (with `Nats-Msg-Id`); the ack comes later.
    /// `TooLarge` when no attempt can succeed; `Failed` for one that may.
    async fn send(&self, js: &jetstream::Context) -> Result<PublishAckFuture, NotStored> {
        crate::failpoint::hit("nats.publish").map_err(|e| NotStored::Failed(e.to_string()))?;
        let message = PublishMessage::build()
            .payload(self.body.clone())
            .message_id(self.event.id());
        js.send_publish(self.subject.clone(), message)
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => NotStored::TooLarge(e.to_string()),
                _ => NotStored::Failed(e.to_string()),
            })
    }

    /// Waits for the ack of the first send, retrying with the same id (a
    /// retry comes after events sent since: order holds except across a
    /// failed publish); settles the event either way.
    async fn finish(self, js: &jetstream::Context, first: Result<PublishAckFuture, NotStored>, counters: &Counters) {
        let event = &self.event;
        let mut sent = first;
        let mut delay = RETRY_DELAY;
        for attempt in 1..=ATTEMPTS {
            let answer = match sent {
                Ok(ack) => ack.await.map_err(|e| ack_refusal(&e)),
                Err(e) => Err(e),
            };
            match answer {
                Ok(ack) => {
                    counters.acked.fetch_add(1, Relaxed);
                    if ack.duplicate {
                        counters.duplicates.fetch_add(1, Relaxed);
                    }
                    counters.answer(event.id(), Ok(ack.sequence));
                    break;
                }
                Err(NotStored::Failed(reason)) if attempt < ATTEMPTS => {
                    counters.retries.fetch_add(1, Relaxed);
                    tracing::warn!(event = event.name(), event_id = event.id(), attempt, %reason, "publish to the stream failed; retrying with the same id");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    sent = self.send(js).await;
                }
                Err(reason) => {
                    counters.failed.fetch_add(1, Relaxed);
                    tracing::error!(event = event.name(), event_id = event.id(), source = event.source(), %reason, "event not in the stream");
                    counters.answer(event.id(), Err(reason));
                    break;
                }
            }
        }
        settle(counters);
    }
}
