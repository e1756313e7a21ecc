//! The export stream's fan-out: every client of `GET /events/stream` gets
//! the bus's events through a queue of its own, bounded in events and in
//! bytes, so that a client that reads slowly (or not at all) holds at most
//! that much memory and never slows the bus. Past either bound the newest
//! events are skipped for that client, and the next event it does get is
//! preceded by how many it missed. An event's text in each format is made
//! once and shared by every client (a 1 MiB event sent to hundreds of
//! clients is serialised once, not once each), and the number of clients
//! is capped ([`MAX_EXPORT_CLIENTS`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use plugbus::Event;
use tokio::sync::mpsc;

/// Clients of the export stream at once: far more than the collectors and
/// tools one host feeds, while bounding what they cost together (each may
/// hold up to its byte bound of events and a message in its socket). One
/// more is answered 503 with `Retry-After`.
pub const MAX_EXPORT_CLIENTS: usize = 256;

/// The export stream's formats.
#[derive(Clone, Copy)]
pub(super) enum Format {
    Plugbus,
    CloudEvents,
}

/// How long a stream may stay silent before it sends a comment line, so
/// that proxies and clients keep it open (axum's `KeepAlive` default).
pub(super) const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// An event offered to the clients, with its server-sent-event frame in
/// each format, made by the first client that asks and shared by the
/// others: each client's copy is a reference, not the bytes.
#[derive(Debug)]
pub(super) struct Exported {
    pub event: Event,
    frames: [OnceLock<Bytes>; 2],
}

impl Exported {
    fn new(event: Event) -> Exported {
        Exported {
            event,
            frames: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// The event as one server-sent event in `format`.
    pub(super) fn frame(&self, format: Format) -> Bytes {
        let (slot, make): (usize, fn(&Event) -> String) = match format {
            Format::Plugbus => (0, |e| serde_json::to_string(e).unwrap_or_default()),
            Format::CloudEvents => (1, plugbus::cloudevents::to_text),
        };
        self.frames[slot]
            .get_or_init(|| sse_frame(None, Some(self.event.id()), &make(&self.event)))
            .clone()
    }
}

/// One server-sent event: its `event:` type and `id:` (an id that could
/// break the stream, holding a line break, is left out), then `text` as
/// `data:` lines, one per line of it.
pub(super) fn sse_frame(kind: Option<&str>, id: Option<&str>, text: &str) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 64);
    if let Some(kind) = kind {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id.filter(|id| !id.chars().any(char::is_control)) {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    // CR LF, LF and CR all end a line in the protocol.
    let mut rest = text;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest.as_bytes()[..end]);
        out.push(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[end + skip..];
    }
    out.push(b'\n');
    Bytes::from(out)
}

/// What a client receives, in order.
#[derive(Debug)]
pub(super) enum Received {
    Event(Arc<Exported>),
    /// This many events were skipped here: the client's queue was full.
    Lagged(u64),
}

/// The listening clients: cheap to share; the tap sends, each stream holds
/// an [`ExportReceiver`].
pub(super) struct ExportHub {
    listeners: Mutex<Vec<Listener>>,
    /// How many listen, read without the lock (nobody: nothing to do).
    count: AtomicUsize,
    max_events: usize,
    max_bytes: usize,
}

/// What a client's queue carries: an event with its size, or a skip.
enum Item {
    Event(Arc<Exported>, usize),
    Lagged(u64),
}

struct Listener {
    tx: mpsc::UnboundedSender<Item>,
    backlog: Arc<Backlog>,
    /// Events skipped since the last one sent (written under the hub's lock).
    skipped: u64,
}

/// What a client's queue holds: its receiver takes off what it reads.
#[derive(Default)]
struct Backlog {
    events: AtomicUsize,
    bytes: AtomicUsize,
}

/// One client's end.
pub(super) struct ExportReceiver {
    rx: mpsc::UnboundedReceiver<Item>,
    backlog: Arc<Backlog>,
}

impl ExportHub {
    /// A hub whose clients may each fall `max_events` events or
    /// `max_bytes` ([`Event::approx_bytes`]) behind; one event over the
    /// byte bound is still sent to a client whose queue is empty.
    pub(super) fn new(max_events: usize, max_bytes: usize) -> ExportHub {
        ExportHub {
            listeners: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            max_events,
            max_bytes,
        }
    }

    /// A new client, receiving the events sent from now on; `None` when
    /// [`MAX_EXPORT_CLIENTS`] are listening already.
    pub(super) fn subscribe(&self) -> Option<ExportReceiver> {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        let mut listeners = self.lock();
        // Clients gone since the last event (a quiet bus sends nothing
        // that would find them), so that reconnecting ones do not pile up.
        listeners.retain(|listener| !listener.tx.is_closed());
        if listeners.len() >= MAX_EXPORT_CLIENTS {
            return None;
        }
        listeners.push(Listener {
            tx,
            backlog: backlog.clone(),
            skipped: 0,
        });
        self.count.store(listeners.len(), Ordering::Release);
        Some(ExportReceiver { rx, backlog })
    }

    /// Offers `event` (of `size` bytes, [`Event::approx_bytes`]) to every
    /// client: queued, or skipped (and counted) for one whose queue is
    /// full. Clients that went away are forgotten.
    pub(super) fn send(&self, event: &Event, size: usize) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let exported = Arc::new(Exported::new(event.clone()));
        let mut listeners = self.lock();
        listeners.retain_mut(|listener| {
            let backlog = &listener.backlog;
            let events = backlog.events.load(Ordering::Acquire);
            let bytes = backlog.bytes.load(Ordering::Acquire);
            if events >= self.max_events || (events > 0 && bytes.saturating_add(size) > self.max_bytes) {
                listener.skipped += 1;
                return !listener.tx.is_closed();
            }
            if listener.skipped > 0 && listener.tx.send(Item::Lagged(listener.skipped)).is_err() {
                return false;
            }
            listener.skipped = 0;
            backlog.events.fetch_add(1, Ordering::AcqRel);
            backlog.bytes.fetch_add(size, Ordering::AcqRel);
            listener.tx.send(Item::Event(exported.clone(), size)).is_ok()
        });
        self.count.store(listeners.len(), Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Listener>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ExportReceiver {
    /// The next event (or skip), waiting for it; `None` once the hub is
    /// gone.
    pub(super) async fn recv(&mut self) -> Option<Received> {
        let item = self.rx.recv().await?;
        Some(self.taken(item))
    }

    /// `item` is read: what it held leaves the backlog.
    fn taken(&self, item: Item) -> Received {
        match item {
            Item::Event(exported, size) => {
                self.backlog.events.fetch_sub(1, Ordering::AcqRel);
                self.backlog.bytes.fetch_sub(size, Ordering::AcqRel);
                Received::Event(exported)
            }
            Item::Lagged(n) => Received::Lagged(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn take(rx: &mut ExportReceiver) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(item) = rx.rx.try_recv() {
            seen.push(match rx.taken(item) {
                Received::Event(e) => e.event.name().to_owned(),
                Received::Lagged(n) => format!("lagged {n}"),
            });
        }
        seen
    }

    #[test]
    fn a_client_that_does_not_read_holds_at_most_the_byte_bound_and_is_told_what_it_missed() {
        let big = |name: &str| Event::new(name, json!(vec![0; 10_000]));
        let size = big("e0").approx_bytes();
        let hub = ExportHub::new(1000, 3 * size);
        let mut slow = hub.subscribe().unwrap();
        let mut fast = hub.subscribe().unwrap();
        for i in 0..10 {
            let event = big(&format!("e{i}"));
            hub.send(&event, event.approx_bytes());
            // The other client reads each one at once: it misses nothing.
            assert_eq!(take(&mut fast), [format!("e{i}")]);
            assert!(slow.backlog.bytes.load(Ordering::Acquire) <= 3 * size);
        }
        assert_eq!(take(&mut slow), ["e0", "e1", "e2"]);
        hub.send(&big("e10"), size);
        assert_eq!(take(&mut slow), ["lagged 7", "e10"]);
        assert_eq!(slow.backlog.bytes.load(Ordering::Acquire), 0);
    }

    fn send_small(hub: &ExportHub, name: &str) {
        hub.send(&Event::new(name, json!({})), 100);
    }

    #[test]
    fn the_event_bound_frees_up_as_the_client_reads_and_a_gone_client_is_forgotten() {
        let hub = ExportHub::new(4, usize::MAX);
        let mut rx = hub.subscribe().unwrap();
        for i in 0..6 {
            send_small(&hub, &format!("e{i}"));
        }
        assert_eq!(take(&mut rx), ["e0", "e1", "e2", "e3"]);
        // Read: room for four more, then one skipped.
        for i in 6..11 {
            send_small(&hub, &format!("e{i}"));
        }
        assert_eq!(take(&mut rx), ["lagged 2", "e6", "e7", "e8", "e9"]);
        assert_eq!(rx.backlog.events.load(Ordering::Acquire), 0);
        // A client gone with a full queue: forgotten at the next event…
        for i in 0..4 {
            send_small(&hub, &format!("f{i}"));
        }
        drop(rx);
        send_small(&hub, "after");
        assert_eq!(hub.count.load(Ordering::Acquire), 0);
        // …or when the next client comes, on a quiet bus.
        drop(hub.subscribe());
        let _third = hub.subscribe().unwrap();
        assert_eq!(hub.lock().len(), 1);
        // One event over the byte bound still reaches an idle client.
        let hub = ExportHub::new(4, 1);
        let mut rx = hub.subscribe().unwrap();
        hub.send(&Event::new("big", json!(vec![0; 1000])), 5000);
        assert_eq!(take(&mut rx), ["big"]);
    }

    #[test]
    fn a_frame_puts_each_line_of_its_text_on_a_data_line() {
        let frame = sse_frame(Some("lagged"), Some("a\nb"), "{\r\n\"x\": 1\n}\r");
        assert_eq!(
            &frame[..],
            b"event: lagged\ndata: {\ndata: \"x\": 1\ndata: }\ndata: \n\n"
        );
        let frame = sse_frame(None, Some("e-1"), "{}");
        assert_eq!(&frame[..], b"id: e-1\ndata: {}\n\n");
    }

    #[test]
    fn clients_share_each_events_text_and_are_capped() {
        let hub = ExportHub::new(4, usize::MAX);
        let mut clients: Vec<ExportReceiver> = (0..MAX_EXPORT_CLIENTS).map(|_| hub.subscribe().unwrap()).collect();
        assert!(hub.subscribe().is_none(), "one client over the cap");
        send_small(&hub, "e");
        let received: Vec<Arc<Exported>> = clients
            .iter_mut()
            .map(|rx| {
                let item = rx.rx.try_recv().unwrap();
                match rx.taken(item) {
                    Received::Event(e) => e,
                    Received::Lagged(_) => panic!("lagged"),
                }
            })
            .collect();
        let first = received[0].frame(Format::Plugbus).as_ptr();
        assert!(
            received.iter().all(|e| e.frame(Format::Plugbus).as_ptr() == first),
            "made once"
        );
        let ce = received[0].frame(Format::CloudEvents);
        assert!(std::str::from_utf8(&ce).unwrap().contains("\"specversion\":\"1.0\""));
        // A client gone makes room for another.
        clients.pop();
        assert!(hub.subscribe().is_some());
    }
}
