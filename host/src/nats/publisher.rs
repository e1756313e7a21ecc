//! Publishing events into the stream without ever blocking `emit`: the emit
//! path hands each event to a bounded queue; one task publishes them with a
//! bounded window of unanswered publish acks, retrying a failed publish with
//! the same `Nats-Msg-Id` (so a retry that did reach the server is answered
//! "duplicate", not stored twice).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
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
    waiters: Mutex<HashMap<String, oneshot::Sender<Result<u64, String>>>>,
    waiting: AtomicBool,
    /// Events taken from the queue whose every predecessor is settled too:
    /// the `accepted` count up to which the stream has answered.
    settled_through: AtomicU64,
    advanced: Notify,
}

/// The stream's answer for one event: its stream sequence, or why it is not
/// in the stream.
pub(crate) type Confirmation = oneshot::Receiver<Result<u64, String>>;

/// The emit path's handle on the publisher task.
pub(crate) struct Publisher {
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    /// Held while an event is queued and counted, so the queue's order and
    /// the `accepted` count agree (what [`settled_through`](Self::settled_through)
    /// relies on). Uncontended in the common case: one lock per publish.
    order: Mutex<()>,
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
            self.counters
                .answer(event.id(), Err("the NATS publish queue is full".into()));
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
        waiters.insert(id.to_owned(), tx);
        self.counters.waiting.store(true, Relaxed);
        rx
    }

    /// How many events were accepted so far: a mark for
    /// [`settled_through`](Self::settled_through).
    pub fn mark(&self) -> u64 {
        self.counters.accepted.load(Relaxed)
    }

    /// Waits until the first `mark` accepted events are all acknowledged
    /// (or given up). A consumer waits for this before acknowledging an
    /// event, so the follow-ups it caused are in the stream first: if this
    /// host dies, the event is redelivered and the follow-ups, published
    /// again with the same ids, are not stored twice.
    pub async fn settled_through(&self, mark: u64) {
        loop {
            let advanced = self.counters.advanced.notified();
            if self.counters.settled_through.load(Relaxed) >= mark {
                return;
            }
            advanced.await;
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
    fn answer(&self, id: &str, result: Result<u64, String>) {
        if !self.waiting.load(Relaxed) || id.is_empty() {
            return;
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = waiters.remove(id) {
            let _ = tx.send(result);
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
    // Which of the events taken from the queue are settled, from the first
    // one not yet settled (number `base`) on.
    let mut base: u64 = 0;
    let mut settled: std::collections::VecDeque<bool> = std::collections::VecDeque::new();
    while open || !in_flight.is_empty() {
        tokio::select! {
            // Settle answers first: they free window slots.
            biased;
            Some(index) = in_flight.next(), if !in_flight.is_empty() => {
                let index: u64 = index;
                if let Some(slot) = settled.get_mut((index - base) as usize) {
                    *slot = true;
                }
                let before = base;
                while settled.front() == Some(&true) {
                    settled.pop_front();
                    base += 1;
                }
                if base != before {
                    counters.settled_through.store(base, Relaxed);
                    counters.advanced.notify_waiters();
                }
            }
            next = rx.recv(), if open && in_flight.len() < window => match next {
                Some(event) => {
                    // Sent here, one after the other, so the stream stores
                    // one host's events in the order they were published;
                    // only the acks are awaited together.
                    let index = base + settled.len() as u64;
                    settled.push_back(false);
                    let outgoing = Outgoing::new(event, partitions);
                    let first = outgoing.send(&js).await;
                    let counters = &counters;
                    let js = &js;
                    in_flight.push(async move {
                        outgoing.finish(js, first, counters).await;
                        index
                    });
                }
                None => open = false,
            },
        }
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
    async fn send(&self, js: &jetstream::Context) -> Result<PublishAckFuture, String> {
        let message = PublishMessage::build()
            .payload(self.body.clone())
            .message_id(self.event.id());
        js.send_publish(self.subject.clone(), message)
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits for the ack of the first send, retrying with the same id (a
    /// retry comes after events sent since: order holds except across a
    /// failed publish); settles the event either way.
    async fn finish(self, js: &jetstream::Context, first: Result<PublishAckFuture, String>, counters: &Counters) {
        let event = &self.event;
        let mut sent = first;
        let mut delay = RETRY_DELAY;
        for attempt in 1..=ATTEMPTS {
            let answer = match sent {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            match answer {
                Ok(ack) => {
                    counters.acked.fetch_add(1, Relaxed);
                    if ack.duplicate {
                        counters.duplicates.fetch_add(1, Relaxed);
                    }
                    counters.answer(event.id(), Ok(ack.sequence));
                    settle(counters);
                    return;
                }
                Err(reason) if attempt < ATTEMPTS => {
                    counters.retries.fetch_add(1, Relaxed);
                    tracing::warn!(event = event.name(), event_id = event.id(), attempt, %reason, "publish to the stream failed; retrying with the same id");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    sent = self.send(js).await;
                }
                Err(reason) => {
                    counters.failed.fetch_add(1, Relaxed);
                    tracing::error!(event = event.name(), event_id = event.id(), %reason, "publish to the stream failed {ATTEMPTS} times; event not in the stream");
                    counters.answer(event.id(), Err(reason));
                    break;
                }
            }
        }
        settle(counters);
    }
}
