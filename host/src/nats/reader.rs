//! Reading a range of the stream in order, for replay (`plugbus replay
//! --nats`, `plugbus query --nats`): an ephemeral ordered consumer, which
//! the server forgets on its own, so reading history leaves nothing behind
//! and never touches the plugins' durable consumers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::event::Event;
use crate::nats::{NatsError, NatsOptions, connect_client, wire};

/// How long the reader waits for the next message before it gives up: a
/// loopback server answers within milliseconds, and the client's own pull
/// requests expire (and are renewed) every 30 s, so ten seconds of silence
/// while messages remain means the server is gone.
const IDLE: Duration = Duration::from_secs(10);

/// A running read of the stream.
pub(crate) struct StreamReader {
    /// Batches of events in stream order, numbered by stream sequence; an
    /// error ends the read.
    pub batches: mpsc::Receiver<Result<Vec<Event>, NatsError>>,
    /// Messages that were not plugbus envelopes: logged and skipped.
    pub skipped: Arc<AtomicU64>,
}

/// Starts reading the stream of `options` from sequence `from` (its first
/// retained message when lower) through the last message stored now, in
/// batches of `batch` events.
///
/// # Errors
/// [`NatsError::Connect`] when the server cannot be reached;
/// [`NatsError::Stream`] when the stream does not exist or cannot be read.
pub(crate) async fn read(options: &NatsOptions, from: u64, batch: usize) -> Result<StreamReader, NatsError> {
    let stream_err = |reason: String| NatsError::Stream {
        stream: options.stream.clone(),
        reason,
    };
    let js = jetstream::new(connect_client(options).await?);
    let mut stream = js
        .get_stream(&options.stream)
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    let state = stream
        .info()
        .await
        .map_err(|e| stream_err(e.to_string()))?
        .state
        .clone();
    let (tx, rx) = mpsc::channel(4);
    let skipped = Arc::new(AtomicU64::new(0));
    // Nothing stored (or nothing from `from` on): an empty read.
    if state.messages == 0 || from > state.last_sequence {
        return Ok(StreamReader { batches: rx, skipped });
    }
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{}.>", wire::SUBJECT_PREFIX),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from.max(state.first_sequence),
            },
            ..OrderedConfig::default()
        })
        .await
        .map_err(|e| stream_err(format!("cannot read it: {e}")))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| stream_err(format!("cannot read it: {e}")))?;
    let end = state.last_sequence;
    let stream_name = options.stream.clone();
    let counted = skipped.clone();
    let start = from.max(state.first_sequence);
    tokio::spawn(async move {
        let mut events = Vec::with_capacity(batch);
        // The last sequence read: a stall names the message after it.
        let mut read = start.saturating_sub(1);
        loop {
            let next = match tokio::time::timeout(IDLE, messages.next()).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(_) => {
                    let _ = tx
                        .send(Err(NatsError::Stream {
                            stream: stream_name,
                            reason: format!(
                                "no message for {IDLE:?} after sequence {read} while reading up to sequence {end}: \
                                 the next message may be one the NATS client cannot read (a header that is not \
                                 UTF-8, or a status line: published by something other than plugbus); \
                                 `--from {}` reads past it",
                                read + 2
                            ),
                        }))
                        .await;
                    return;
                }
            };
            let message = match next {
                Ok(message) => message,
                Err(e) => {
                    // The ordered consumer recreates itself after a gap or
                    // a missed heartbeat; a server that stays away ends the
                    // read through `IDLE`.
                    tracing::warn!(stream = %stream_name, error = %e, "reading the stream: retrying");
                    continue;
                }
            };
            let (seq, pending) = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(e) => {
                    tracing::warn!(stream = %stream_name, error = %e, "a message without JetStream metadata; skipped");
                    continue;
                }
            };
            if seq > end {
                break;
            }
            read = read.max(seq);
            match wire::decode(&message.payload, seq) {
                Ok(event) => events.push(event),
                Err(reason) => {
                    tracing::warn!(stream = %stream_name, stream_seq = seq, %reason, "not a plugbus event; skipped");
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
            if events.len() == batch
                && tx
                    .send(Ok(std::mem::replace(&mut events, Vec::with_capacity(batch))))
                    .await
                    .is_err()
            {
                return;
            }
            // `pending` is what the stream holds past this message: none
            // means the end, even when the last message was deleted.
            if seq == end || pending == 0 {
                break;
            }
        }
        if !events.is_empty() {
            let _ = tx.send(Ok(events)).await;
        }
    });
    Ok(StreamReader { batches: rx, skipped })
}
