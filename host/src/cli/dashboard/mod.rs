//! The live dashboard of `plugbus serve`, and the event export stream.
//!
//! - `GET /`, `/dashboard.js`, `/dashboard.css`: the page, built into the
//!   binary (plain HTML/CSS/JS, no network at run time).
//! - `GET /dashboard/stream?pattern=P&correlation_id=C`: server-sent events,
//!   one `snapshot` every [`SNAPSHOT_INTERVAL`]: every plugin, the bus's
//!   event rate over the last [`RATE_WINDOW`] seconds, the log's position,
//!   and the events published since the previous snapshot that match the
//!   filter (at most [`TAIL_PER_SNAPSHOT`]; the rest are counted in
//!   `events_skipped`). What one snapshot costs is bounded by the number of
//!   plugins, never by the event rate.
//! - `GET /dashboard/snapshot?pattern=P&correlation_id=C`: the same snapshot,
//!   once, as JSON (its `events` are the latest matching ones).
//! - `GET /events/stream?format=plugbus|cloudevents&pattern=P&correlation_id=C`:
//!   every matching event as one server-sent event (`id:` the event id,
//!   `data:` the plugbus JSON envelope or a structured CloudEvent). A client
//!   that falls more than [`EXPORT_BUFFER`] events or [`EXPORT_BYTES`]
//!   behind skips the events that do not fit, and is told before the next
//!   one it gets, with an `event: lagged` message (`{"skipped": n}`).
//!
//! - `GET /runs/{correlation_id}/events?limit=N&after=SEQ`: one run's
//!   event timeline, from the event log or the bus's history (see [`runs`]).
//!
//! The events reach the dashboard through one native handler on `**` that
//! the dashboard subscribes at the lowest priority: it copies each event
//! into a bounded ring (and into each export client's queue, see [`export`]).
//! Every stream ends when the server shuts down.

mod export;
mod runs;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use plugbus::ring::SizedRing;
use plugbus::{
    Bus, Event, FailureCounts, HandlerOptions, LastFailure, LoadFailure, LogStatus, Pattern, PluginInfo, PluginState,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use export::{ExportHub, Format, Received};

/// How often a dashboard gets a snapshot: twice a second keeps the page
/// under a second behind, and 100 plugins' rows twice a second are a few
/// tens of KiB/s.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(500);

/// Events kept for the tail: enough for a filter to find matches among the
/// last seconds of a busy bus, a few hundred KiB of ordinary events.
pub const TAIL_CAPACITY: usize = 1000;

/// Memory the tail may hold, whatever its count: events come from outside
/// (`POST /events`), and 1 MiB of small numbers parses into ~18 MiB, so
/// 1,000 of them bound nothing. 16 MiB is 1,000 events of 16 KiB.
pub const TAIL_BYTES: usize = 16 << 20;

/// Events sent per snapshot at most: 100 rows a second is more than anyone
/// reads, and keeps the page's work bounded at 10,000 events/s.
pub const TAIL_PER_SNAPSHOT: usize = 50;

/// Seconds of event-rate history: the chart's five minutes at 1 s resolution.
pub const RATE_WINDOW: usize = 300;

/// Events an export client may fall behind before it is told it lagged:
/// half a second at 8,000 events/s.
pub const EXPORT_BUFFER: usize = 4096;

/// Memory one export client's backlog may hold ([`Event::approx_bytes`]),
/// whatever its count: as for the tail, 4,096 events from `POST /events`
/// could otherwise hold gigabytes. Past it, as past [`EXPORT_BUFFER`], the
/// client skips events and is told how many.
pub const EXPORT_BYTES: usize = 16 << 20;

/// Dashboard pages streaming at once (`GET /dashboard/stream`): one per
/// open page; 64 pages watching one host is more than any team opens,
/// while 1,500 idle streams were measured taking 1–1.6 cores in
/// snapshots. One more is answered 503 with `Retry-After`.
pub const MAX_PAGE_STREAMS: usize = 64;

/// Characters of payload a tail row carries: a preview, not the event.
const PAYLOAD_PREVIEW: usize = 200;

const INDEX_HTML: &str = include_str!("index.html");
const DASHBOARD_JS: &str = include_str!("dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard.css");

/// The dashboard's state: a cheap handle (clone it into handlers); the
/// rate sampler task stops when the last handle is dropped.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
    _sampler: Arc<AbortOnDrop>,
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    bus: Bus,
    tail: Mutex<Tail>,
    export: ExportHub,
    rate: Mutex<VecDeque<(u64, f64)>>,
    /// Becomes true when the server shuts down: every stream ends.
    stopping: watch::Receiver<bool>,
    /// Events the bus keeps in its history (run timelines without a log).
    history_capacity: usize,
    /// Open page streams ([`MAX_PAGE_STREAMS`]): each costs a snapshot
    /// every [`SNAPSHOT_INTERVAL`] whether or not its client reads.
    page_streams: Arc<tokio::sync::Semaphore>,
}

/// The most recent events, each with its position in the tap's count.
#[derive(Default)]
struct Tail {
    /// Events seen so far; the newest has number `seen`.
    seen: u64,
    /// Each event with its number, at most [`TAIL_BYTES`] of them
    /// ([`Event::approx_bytes`]).
    events: SizedRing<(u64, Event)>,
}

impl Tail {
    /// Keeps `event` (of `size` bytes, [`Event::approx_bytes`]) as the
    /// newest, dropping the oldest past `capacity` events or `max_bytes`
    /// (the newest is kept whatever its size).
    fn push(&mut self, event: &Event, size: usize, capacity: usize, max_bytes: usize) {
        self.seen += 1;
        self.events.push((self.seen, event.clone()), size, capacity, max_bytes);
    }
}

/// Which events a stream wants.
pub(super) struct Filter {
    pattern: Option<Pattern>,
    correlation_id: Option<String>,
}

impl Filter {
    /// Every event.
    pub(super) fn all() -> Filter {
        Filter {
            pattern: None,
            correlation_id: None,
        }
    }

    fn matches(&self, event: &Event) -> bool {
        self.pattern.as_ref().is_none_or(|p| p.matches(event.name()))
            && self
                .correlation_id
                .as_deref()
                .is_none_or(|c| event.correlation_id() == Some(c))
    }
}

/// `?pattern=&correlation_id=&format=` of the stream endpoints.
#[derive(serde::Deserialize, Default)]
pub struct StreamParams {
    pattern: Option<String>,
    correlation_id: Option<String>,
    format: Option<String>,
}

impl StreamParams {
    /// The filter asked for; `Err` is a 400 answer naming the parameter.
    fn filter(&self) -> Result<Filter, String> {
        let pattern = match self.pattern.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            None => None,
            Some(p) => Some(Pattern::parse(p).map_err(|e| format!("pattern: {e}"))?),
        };
        let correlation_id = self
            .correlation_id
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        Ok(Filter {
            pattern,
            correlation_id,
        })
    }
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": reason }))).into_response()
}

/// A query string read as `T`, refused as the other routes refuse bad
/// input: 400 with `{"error": …}` in JSON (axum's own `Query` answers in
/// plain text).
pub(super) struct JsonQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for JsonQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(JsonQuery(value)),
            Err(e) => Err(bad_request(format!("malformed query string: {}", e.body_text()))),
        }
    }
}

/// 503 with `Retry-After`: a stream over its cap of clients.
fn busy(reason: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "5")],
        Json(json!({ "error": reason })),
    )
        .into_response()
}

impl Dashboard {
    /// Subscribes the dashboard's tap to `bus` and starts sampling its event
    /// rate. `history_capacity` is what the bus was built to keep in its
    /// history (where run timelines come from without a log). `stopping`
    /// turning true ends every stream (the server is shutting down and
    /// waits for open connections).
    pub fn start(bus: &Bus, history_capacity: usize, stopping: watch::Receiver<bool>) -> Dashboard {
        let export = ExportHub::new(EXPORT_BUFFER, EXPORT_BYTES);
        let inner = Arc::new(Inner {
            bus: bus.clone(),
            tail: Mutex::new(Tail::default()),
            export,
            rate: Mutex::new(VecDeque::with_capacity(RATE_WINDOW)),
            stopping,
            history_capacity,
            page_streams: Arc::new(tokio::sync::Semaphore::new(MAX_PAGE_STREAMS)),
        });
        let sampler = tokio::spawn(sample_rate_into(Arc::downgrade(&inner)));
        let tap = Arc::downgrade(&inner);
        // The lowest priority: the embedder's own handlers run first. `**`
        // is valid, so subscribing cannot fail.
        let subscribed = bus.on_with("**", HandlerOptions::new().priority(i32::MIN), move |event| {
            if let Some(inner) = tap.upgrade() {
                inner.observe(event);
            }
        });
        if let Err(e) = subscribed {
            tracing::error!(error = %e, "the dashboard could not subscribe to events");
        }
        Dashboard {
            inner,
            _sampler: Arc::new(AbortOnDrop(sampler.abort_handle())),
        }
    }

    /// The next snapshot of a stream that has seen the tap's events up to
    /// number `after` (`None`: a new stream, which gets the latest matching
    /// events, none of them "skipped"), and the number to pass next time.
    pub(super) fn next_snapshot(&self, filter: &Filter, after: Option<u64>) -> (String, u64) {
        let (events, skipped, newest) = self.inner.events_after(after.unwrap_or(0), filter);
        let skipped = if after.is_some() { skipped } else { 0 };
        (self.inner.snapshot(&events, skipped), newest)
    }

    /// The routes of the page and its streams.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
            .route(
                "/dashboard.js",
                get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
            )
            .route(
                "/dashboard.css",
                get(|| async { asset("text/css; charset=utf-8", DASHBOARD_CSS) }),
            )
            .route("/dashboard/snapshot", get(get_snapshot))
            .route("/dashboard/stream", get(get_stream))
            .route("/events/stream", get(get_export))
            .route("/runs/{correlation_id}/events", get(runs::get_timeline))
            .with_state(self.clone())
    }
}

impl Inner {
    fn observe(&self, event: &Event) {
        // Measured once (a walk of the payload) for the tail and the export.
        let size = event.approx_bytes();
        {
            lock(&self.tail).push(event, size, TAIL_CAPACITY, TAIL_BYTES);
        }
        self.export.send(event, size);
    }

    /// The matching events after number `after` (oldest first, at most
    /// [`TAIL_PER_SNAPSHOT`], the newest kept), how many matching ones did
    /// not fit, and the number of the newest event seen.
    fn events_after(&self, after: u64, filter: &Filter) -> (Vec<Event>, u64, u64) {
        let tail = lock(&self.tail);
        let mut picked: Vec<Event> = Vec::new();
        let mut skipped = 0u64;
        for (n, event) in tail.events.iter().rev() {
            if *n <= after {
                break;
            }
            if filter.matches(event) {
                if picked.len() < TAIL_PER_SNAPSHOT {
                    picked.push(event.clone());
                } else {
                    skipped += 1;
                }
            }
        }
        picked.reverse();
        (picked, skipped, tail.seen)
    }

    /// One snapshot, as JSON text (serialised straight from the borrowed
    /// figures: no intermediate `Value` tree).
    fn snapshot(&self, events: &[Event], skipped: u64) -> String {
        let bus = &self.bus;
        let mut plugins = bus.plugins();
        // A stable order, so the page's rows stay where they are.
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        let rate: Vec<(u64, f64)> = lock(&self.rate).iter().copied().collect();
        let doc = Snapshot {
            time_unix_ms: unix_ms(),
            published: bus.published(),
            schema_rejected: bus.schema_rejected(),
            rate,
            plugins: plugins.iter().map(PluginRow::of).collect(),
            load_failures: bus.load_failures(),
            startup: bus.startup(),
            log: bus.log_status(),
            events: events.iter().map(EventRow::of).collect(),
            events_skipped: skipped,
        };
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_string(&doc).unwrap_or_default()
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (each critical section is a push, a pop or a read).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Samples the bus's published count once a second into the rate window,
/// until the dashboard is dropped.
async fn sample_rate_into(inner: std::sync::Weak<Inner>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(Instant, u64)> = None;
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let published = inner.bus.published();
        if let Some((then, before)) = last {
            let secs = now.duration_since(then).as_secs_f64().max(1e-3);
            let rate = published.saturating_sub(before) as f64 / secs;
            let mut window = lock(&inner.rate);
            if window.len() == RATE_WINDOW {
                window.pop_front();
            }
            window.push_back((unix_ms() / 1000, (rate * 10.0).round() / 10.0));
        }
        last = Some((now, published));
    }
}

/// What `/dashboard/stream` and `/dashboard/snapshot` send (documented in
/// docs/dashboard.md).
#[derive(Serialize)]
struct Snapshot<'a> {
    time_unix_ms: u64,
    published: u64,
    schema_rejected: u64,
    /// `[unix seconds, events/s]`, oldest first.
    rate: Vec<(u64, f64)>,
    plugins: Vec<PluginRow<'a>>,
    load_failures: Vec<LoadFailure>,
    /// The plugins still loading while the host starts.
    startup: plugbus::StartupStatus,
    log: Option<LogStatus>,
    events: Vec<EventRow<'a>>,
    events_skipped: u64,
}

/// One plugin's row: [`PluginInfo`] flattened, with the figures the page
/// shows computed here (latency quantiles, fuel per event).
#[derive(Serialize)]
struct PluginRow<'a> {
    name: &'a str,
    state: PluginState,
    language: Option<&'static str>,
    size_bytes: u64,
    version: &'a str,
    /// The key id that signed it, when signatures are checked.
    signed_by: Option<&'a str>,
    subscriptions: &'a [String],
    /// Exports `query`: the page asks such plugins for runs.
    queryable: bool,
    delivered: u64,
    ok: u64,
    errors: u64,
    failures: &'a FailureCounts,
    dropped: u64,
    restarts: u64,
    queue_depth: usize,
    queue_capacity: usize,
    latency_p50_us: Option<f64>,
    latency_p99_us: Option<f64>,
    fuel_per_event: Option<u64>,
    memory_bytes: u64,
    memory_limit_bytes: usize,
    quarantine_retry_in_ms: Option<u64>,
    dead_letters: u64,
    reload_error: Option<&'a str>,
    last_error: Option<&'a str>,
    last_failure: Option<&'a LastFailure>,
    /// Outbound requests, for a plugin with an `[http]` grant (counts only:
    /// never URLs or secrets).
    http: Option<&'a plugbus::http::HttpCounts>,
}

impl<'a> PluginRow<'a> {
    fn of(p: &'a PluginInfo) -> PluginRow<'a> {
        let s = &p.stats;
        // Microseconds with one decimal.
        let micros = |q: f64| s.latency.quantile(q).map(|secs| (secs * 1e7).round() / 10.0);
        PluginRow {
            name: &p.name,
            state: p.state,
            language: p.language,
            size_bytes: p.size,
            version: &p.version,
            signed_by: p.signer.as_ref().map(|s| s.key_id.as_str()),
            subscriptions: &p.subscriptions,
            queryable: p.queryable,
            delivered: s.delivered,
            ok: s.ok,
            errors: s.errors,
            failures: &s.failures,
            dropped: s.dropped,
            restarts: s.restarts,
            queue_depth: p.queue_depth,
            queue_capacity: p.queue_capacity,
            latency_p50_us: micros(0.5),
            latency_p99_us: micros(0.99),
            fuel_per_event: s.fuel_consumed.checked_div(s.delivered),
            memory_bytes: s.memory_bytes,
            memory_limit_bytes: p.memory_limit_bytes,
            quarantine_retry_in_ms: p.quarantine_retry_in_ms,
            dead_letters: s.dead_letters,
            reload_error: p.reload_error.as_deref(),
            last_error: s.last_error.as_deref(),
            last_failure: s.last_failure.as_ref(),
            http: p.http.as_ref(),
        }
    }
}

/// One tail row: the event with its payload cut to a preview.
#[derive(Serialize)]
struct EventRow<'a> {
    seq: Option<u64>,
    id: &'a str,
    name: &'a str,
    correlation_id: Option<&'a str>,
    source: &'a str,
    time_unix_nanos: u64,
    payload: &'a str,
    /// Whether `payload` was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

impl<'a> EventRow<'a> {
    fn of(e: &'a Event) -> EventRow<'a> {
        let payload = e.payload_json();
        let (payload, truncated) = match payload.char_indices().nth(PAYLOAD_PREVIEW) {
            Some((at, _)) => (&payload[..at], true),
            None => (payload, false),
        };
        EventRow {
            seq: e.seq(),
            id: e.id(),
            name: e.name(),
            correlation_id: e.correlation_id(),
            source: e.source(),
            time_unix_nanos: e.time_unix_nanos(),
            payload,
            truncated,
        }
    }
}

async fn get_snapshot(State(dash): State<Dashboard>, JsonQuery(params): JsonQuery<StreamParams>) -> Response {
    let filter = match params.filter() {
        Ok(f) => f,
        Err(reason) => return bad_request(reason),
    };
    let (text, _) = dash.next_snapshot(&filter, None);
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// What a snapshot stream carries from one tick to the next.
struct Ticking {
    dash: Dashboard,
    filter: Filter,
    /// The stream's place among [`MAX_PAGE_STREAMS`], given back when the
    /// client goes.
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The newest tap number already looked at; `None` before the first.
    after: Option<u64>,
    ticker: tokio::time::Interval,
    stopping: watch::Receiver<bool>,
}

async fn get_stream(State(dash): State<Dashboard>, JsonQuery(params): JsonQuery<StreamParams>) -> Response {
    let filter = match params.filter() {
        Ok(f) => f,
        Err(reason) => return bad_request(reason),
    };
    let Ok(permit) = dash.inner.page_streams.clone().try_acquire_owned() else {
        return busy(format!(
            "{MAX_PAGE_STREAMS} dashboard streams open already; close a page or try again later"
        ));
    };
    let mut ticker = tokio::time::interval(SNAPSHOT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopping = dash.inner.stopping.clone();
    let state = Ticking {
        _permit: permit,
        dash,
        filter,
        after: None,
        ticker,
        stopping,
    };
    let snapshots = stream::unfold(state, |mut s| async move {
        // The first tick of an interval is immediate: a new page fills at once.
        if !wait_or_stop(s.ticker.tick(), &mut s.stopping).await {
            return None;
        }
        let (data, newest) = s.dash.next_snapshot(&s.filter, s.after);
        s.after = Some(newest);
        let message = SseEvent::default().event("snapshot").data(data);
        Some((Ok::<_, Infallible>(message), s))
    });
    sse(snapshots)
}

/// Waits for `work`, or returns false as soon as the server is stopping.
async fn wait_or_stop<T>(work: impl Future<Output = T>, stopping: &mut watch::Receiver<bool>) -> bool {
    if *stopping.borrow() {
        return false;
    }
    tokio::select! {
        _ = work => !*stopping.borrow(),
        // A closed channel means the server is gone too.
        _ = stopping.changed() => false,
    }
}

fn sse<S>(events: S) -> Response
where
    S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
{
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

struct Exporting {
    events: export::ExportReceiver,
    filter: Filter,
    format: Format,
    stopping: watch::Receiver<bool>,
}

async fn get_export(State(dash): State<Dashboard>, JsonQuery(params): JsonQuery<StreamParams>) -> Response {
    let filter = match params.filter() {
        Ok(f) => f,
        Err(reason) => return bad_request(reason),
    };
    let format = match params.format.as_deref() {
        None | Some("plugbus") => Format::Plugbus,
        Some("cloudevents") => Format::CloudEvents,
        Some(other) => {
            return bad_request(format!("format: `{other}` is neither `plugbus` nor `cloudevents`"));
        }
    };
    let Some(events) = dash.inner.export.subscribe() else {
        return busy(format!(
            "{} clients of the export stream already; try again later",
            export::MAX_EXPORT_CLIENTS
        ));
    };
    let state = Exporting {
        events,
        filter,
        format,
        stopping: dash.inner.stopping.clone(),
    };
    // Frames written as bytes shared by every client (an event's frame is
    // made once), with a comment line after `KEEP_ALIVE` of silence.
    let frames = stream::unfold(state, |mut s| async move {
        loop {
            if *s.stopping.borrow() {
                return None;
            }
            let next = tokio::select! {
                next = s.events.recv() => next,
                () = tokio::time::sleep(export::KEEP_ALIVE) => {
                    return Some((Ok::<_, Infallible>(bytes::Bytes::from_static(b":\n\n")), s));
                }
                _ = s.stopping.changed() => return None,
            };
            let frame = match next {
                Some(Received::Event(exported)) if s.filter.matches(&exported.event) => exported.frame(s.format),
                Some(Received::Event(_)) => continue,
                Some(Received::Lagged(skipped)) => {
                    export::sse_frame(Some("lagged"), None, &json!({ "skipped": skipped }).to_string())
                }
                None => return None,
            };
            return Some((Ok(frame), s));
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(frames),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_bounded_in_bytes_as_well_as_in_events() {
        let big = || Event::new("big", json!(vec![0; 10_000]));
        let mut tail = Tail::default();
        for _ in 0..10 {
            tail.push(&big(), big().approx_bytes(), 1000, 3 * big().approx_bytes());
        }
        assert_eq!((tail.events.len(), tail.seen), (3, 10));
        for _ in 0..10 {
            tail.push(&Event::new("small", json!({})), 100, 4, usize::MAX);
        }
        assert_eq!(tail.events.len(), 4);
        assert_eq!(tail.events.newest().map(|e| e.0), Some(20));
    }
}
