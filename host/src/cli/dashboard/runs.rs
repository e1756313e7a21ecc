//! `GET /runs/{correlation_id}/events`: one run's event timeline, for the dashboard's Runs view.
//!
//! A run is a correlation id (as `agent-runs` keys them). Its events are read
//! from the event log through the segments' correlation index when the bus
//! has a log, else from the bus's in-memory history (`plugbus serve
//! --history N`, the last N events), filtered by the id. The answer is
//! bounded: at most `limit` events (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]), oldest first, each payload cut to a preview of
//! [`PAYLOAD_PREVIEW`] characters; `after=SEQ` continues from a sequence
//! number (the page's "load more", and its live updates of an open run).
//!
//! Events fed from OpenTelemetry spans carry their span in the payload's
//! `otel` object (docs/opentelemetry.md); it is lifted out as `span`, so a
//! client can nest spans under their parents without the whole payload.

use std::path::Path as FsPath;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use plugbus::{Event, LogError, LogReader, Record};
use serde::Serialize;
use serde_json::{Value, json};

use super::Dashboard;

/// Events one answer holds when the request does not say: a long agent run
/// at a glance, a few hundred KiB at most.
pub const DEFAULT_LIMIT: usize = 500;

/// Most events one answer holds (with payload previews, ~12 MiB at worst).
pub const MAX_LIMIT: usize = 5_000;

/// Characters of payload an event carries: enough to read, not the event.
pub const PAYLOAD_PREVIEW: usize = 2_000;

/// Characters kept of each text field of a span (names and ids are short;
/// this bounds what a hand-written `otel` object can make the page hold).
const SPAN_TEXT: usize = 256;

/// Why a timeline request failed; each maps to a status code and
/// `{"error": …}`.
#[derive(Debug, thiserror::Error)]
pub(super) enum TimelineError {
    #[error("`limit` must be a whole number from 1 to {MAX_LIMIT}, not `{0}`")]
    BadLimit(String),
    #[error("`after` must be a sequence number, not `{0}`")]
    BadAfter(String),
    #[error("no events of run `{run}` {place}")]
    UnknownRun { run: String, place: String },
    #[error("cannot read the event log: {0}")]
    Log(#[from] LogError),
    #[error("reading the event log stopped: {0}")]
    Reader(#[from] tokio::task::JoinError),
}

impl TimelineError {
    fn status(&self) -> StatusCode {
        match self {
            TimelineError::BadLimit(_) | TimelineError::BadAfter(_) => StatusCode::BAD_REQUEST,
            TimelineError::UnknownRun { .. } => StatusCode::NOT_FOUND,
            TimelineError::Log(_) | TimelineError::Reader(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for TimelineError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// `?limit=N&after=SEQ`, as text: a bad value is a 400 naming it.
#[derive(serde::Deserialize, Default)]
pub(super) struct TimelineParams {
    limit: Option<String>,
    after: Option<String>,
}

impl TimelineParams {
    /// The limit asked for (default [`DEFAULT_LIMIT`]) and the sequence
    /// number to continue after (0: from the start).
    fn parse(&self) -> Result<(usize, u64), TimelineError> {
        let limit = match self.limit.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| TimelineError::BadLimit(text.to_owned()))?,
        };
        let after = match self.after.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            None => 0,
            Some(text) => text
                .parse::<u64>()
                .map_err(|_| TimelineError::BadAfter(text.to_owned()))?,
        };
        Ok((limit, after))
    }
}

/// Where a timeline was read from.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "snake_case")]
enum Origin {
    /// The event log, through its correlation index.
    Log,
    /// The bus's in-memory history of recent events.
    History,
}

/// The answer: the events (oldest first) and whether more follow.
#[derive(Serialize)]
struct Timeline {
    run: String,
    from: Origin,
    /// Events kept in memory, when read from the history (older ones are gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    history_capacity: Option<usize>,
    events: Vec<TimelineEvent>,
    /// More events of the run follow the last one: ask again with `after`.
    truncated: bool,
}

/// One event of a timeline.
#[derive(Serialize, Debug)]
struct TimelineEvent {
    seq: Option<u64>,
    id: String,
    name: String,
    time_unix_nanos: u64,
    source: String,
    depth: u8,
    /// The payload's JSON text, cut to [`PAYLOAD_PREVIEW`] characters.
    payload: String,
    /// Whether `payload` was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    payload_truncated: bool,
    /// The OpenTelemetry span the event came from (the payload's `otel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    span: Option<Span>,
}

impl TimelineEvent {
    fn of_record(record: Record) -> TimelineEvent {
        let (payload, payload_truncated) = preview(record.payload.to_string());
        TimelineEvent {
            seq: Some(record.seq),
            span: Span::of(&record.payload),
            id: record.id,
            name: record.name,
            time_unix_nanos: record.time_unix_nanos,
            source: record.source,
            depth: record.depth,
            payload,
            payload_truncated,
        }
    }

    fn of_event(event: &Event) -> TimelineEvent {
        let (payload, payload_truncated) = preview(event.payload_json().to_owned());
        TimelineEvent {
            seq: event.seq(),
            id: event.id().to_owned(),
            name: event.name().to_owned(),
            time_unix_nanos: event.time_unix_nanos(),
            source: event.source().to_owned(),
            depth: event.depth(),
            payload,
            payload_truncated,
            span: Span::of(event.payload()),
        }
    }
}

/// `text` cut to [`PAYLOAD_PREVIEW`] characters, and whether it was.
fn preview(mut text: String) -> (String, bool) {
    match text.char_indices().nth(PAYLOAD_PREVIEW) {
        Some((at, _)) => {
            text.truncate(at);
            (text, true)
        }
        None => (text, false),
    }
}

/// The span of an OTel-fed event: the fields of its payload's `otel` object
/// that place it in its trace (docs/opentelemetry.md). Only an object with
/// a `span_id` is a span.
#[derive(Serialize, Debug, PartialEq, Eq)]
struct Span {
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_unix_nano: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_unix_nano: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_message: Option<String>,
}

impl Span {
    fn of(payload: &Value) -> Option<Span> {
        let otel = payload.get("otel")?.as_object()?;
        let text = |field: &str| {
            otel.get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(|s| s.chars().take(SPAN_TEXT).collect::<String>())
        };
        // Numbers as the mapping writes them, or as text (OTLP JSON's int64).
        let nanos = |field: &str| match otel.get(field)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        Some(Span {
            span_id: text("span_id")?,
            parent_span_id: text("parent_span_id"),
            trace_id: text("trace_id"),
            name: text("name"),
            kind: text("kind"),
            start_unix_nano: nanos("start_unix_nano"),
            end_unix_nano: nanos("end_unix_nano"),
            status: text("status"),
            status_message: text("status_message"),
        })
    }
}

/// The run's events with `seq > after` in the log in `dir`, at most
/// `limit`, and whether more follow. Blocking: file reads.
fn read_log(dir: &FsPath, run: &str, after: u64, limit: usize) -> Result<(Vec<TimelineEvent>, bool), LogError> {
    let mut events = Vec::new();
    for record in LogReader::open(dir, after.saturating_add(1))?.correlation(run) {
        let record = record?;
        if events.len() == limit {
            return Ok((events, true));
        }
        events.push(TimelineEvent::of_record(record));
    }
    Ok((events, false))
}

/// The same from `history` (oldest first).
fn read_history(history: &[Event], run: &str, after: u64, limit: usize) -> (Vec<TimelineEvent>, bool) {
    let mut matching = history
        .iter()
        .filter(|e| e.correlation_id() == Some(run) && e.seq().is_none_or(|s| s > after));
    let events: Vec<TimelineEvent> = matching.by_ref().take(limit).map(TimelineEvent::of_event).collect();
    let more = matching.next().is_some();
    (events, more)
}

pub(super) async fn get_timeline(
    State(dash): State<Dashboard>,
    Path(run): Path<String>,
    super::JsonQuery(params): super::JsonQuery<TimelineParams>,
) -> Result<Json<Value>, TimelineError> {
    let (limit, after) = params.parse()?;
    let bus = &dash.inner.bus;
    let (from, history_capacity, events, truncated) = match bus.event_log() {
        Some(log) => {
            let dir = log.dir().to_owned();
            let id = run.clone();
            let (events, more) = tokio::task::spawn_blocking(move || read_log(&dir, &id, after, limit)).await??;
            (Origin::Log, None, events, more)
        }
        None => {
            let capacity = dash.inner.history_capacity;
            let (events, more) = read_history(&bus.history(capacity), &run, after, limit);
            (Origin::History, Some(capacity), events, more)
        }
    };
    // A run with no events at all is unknown; past `after`, none is news.
    if events.is_empty() && after == 0 {
        let place = match history_capacity {
            None => "in the event log".to_owned(),
            Some(0) => "kept: without --log, `plugbus serve --history N` keeps the last N events".to_owned(),
            Some(n) => format!("among the last {n} events kept in memory (no --log)"),
        };
        return Err(TimelineError::UnknownRun { run, place });
    }
    let timeline = Timeline {
        run,
        from,
        history_capacity,
        events,
        truncated,
    };
    // Plain data with string keys: serialising cannot fail.
    Ok(Json(serde_json::to_value(timeline).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(limit: Option<&str>, after: Option<&str>) -> TimelineParams {
        TimelineParams {
            limit: limit.map(str::to_owned),
            after: after.map(str::to_owned),
        }
    }

    #[test]
    fn limits_default_to_500_and_stay_within_5000() {
        assert_eq!(params(None, None).parse().unwrap(), (DEFAULT_LIMIT, 0));
        assert_eq!(params(Some("5000"), Some("17")).parse().unwrap(), (5000, 17));
        assert_eq!(params(Some(""), Some(" ")).parse().unwrap(), (DEFAULT_LIMIT, 0));
        for bad in ["0", "5001", "-1", "ten", "1.5"] {
            let e = params(Some(bad), None).parse().unwrap_err();
            assert!(matches!(e, TimelineError::BadLimit(_)), "{bad}: {e}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
        let e = params(None, Some("x")).parse().unwrap_err();
        assert!(e.to_string().contains("`after`"), "{e}");
    }

    #[test]
    fn a_span_is_read_from_the_payloads_otel_object() {
        let payload = json!({"model": "m", "otel": {
            "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331",
            "parent_span_id": "00f067aa0ba902b7", "name": "chat m", "kind": "client",
            "start_unix_nano": 1_764_648_000_000_000_000u64, "end_unix_nano": "1764648000500000000",
            "status": "ok", "extra": [1, 2]}});
        let span = Span::of(&payload).unwrap();
        assert_eq!(span.span_id, "b7ad6b7169203331");
        assert_eq!(span.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(span.start_unix_nano, Some(1_764_648_000_000_000_000));
        assert_eq!(span.end_unix_nano, Some(1_764_648_000_500_000_000), "int64 as text");
        assert_eq!(span.status.as_deref(), Some("ok"));
        assert_eq!(span.status_message, None);
        let root = Span::of(&json!({"otel": {"span_id": "a", "parent_span_id": ""}})).unwrap();
        assert_eq!(root.parent_span_id, None, "an empty parent is a root");
        for no_span in [
            json!({}),
            json!({"otel": "x"}),
            json!({"otel": {"name": "n"}}),
            json!(3),
        ] {
            assert_eq!(Span::of(&no_span), None, "{no_span}");
        }
        let long = "x".repeat(10_000);
        let cut = Span::of(&json!({"otel": {"span_id": long, "name": long}})).unwrap();
        assert_eq!(cut.span_id.len(), SPAN_TEXT);
        assert_eq!(cut.name.unwrap().len(), SPAN_TEXT);
    }

    #[test]
    fn payloads_are_cut_to_a_preview_on_a_character_boundary() {
        let (short, cut) = preview("{\"a\":1}".into());
        assert_eq!((short.as_str(), cut), ("{\"a\":1}", false));
        let (long, cut) = preview("é".repeat(PAYLOAD_PREVIEW + 5));
        assert!(cut);
        assert_eq!(long.chars().count(), PAYLOAD_PREVIEW);
    }

    #[tokio::test]
    async fn the_history_and_the_log_are_filtered_by_run_after_a_seq_and_limited() {
        let log = tempfile::tempdir().unwrap();
        let logged = plugbus::Bus::builder().log_dir(log.path()).build().await.unwrap();
        let kept = plugbus::Bus::builder().history(100).build().await.unwrap();
        let events = || {
            (1..=6u64).map(|i| {
                let run = if i % 2 == 0 { "even" } else { "odd" };
                Event::new(format!("step.{i}"), json!({"i": i})).with_correlation_id(run)
            })
        };
        logged.publish_durable_all(events()).await.unwrap();
        for event in events() {
            kept.publish(event);
        }
        let names = |(events, more): (Vec<TimelineEvent>, bool)| {
            let names: Vec<String> = events.into_iter().map(|e| e.name).collect();
            (names, more)
        };
        let history = kept.history(100);
        let from_log = |run: &str, after: u64, limit: usize| names(read_log(log.path(), run, after, limit).unwrap());
        let from_history = |run: &str, after: u64, limit: usize| names(read_history(&history, run, after, limit));
        for read in [
            &from_log as &dyn Fn(&str, u64, usize) -> (Vec<String>, bool),
            &from_history,
        ] {
            assert_eq!(
                read("even", 0, 10),
                (vec!["step.2".into(), "step.4".into(), "step.6".into()], false)
            );
            assert_eq!(read("even", 0, 2), (vec!["step.2".into(), "step.4".into()], true));
            assert_eq!(read("even", 4, 2), (vec!["step.6".into()], false));
            assert_eq!(read("none", 0, 2), (vec![], false));
        }
        let first = read_log(log.path(), "odd", 0, 1).unwrap().0.remove(0);
        assert_eq!(
            (first.seq, first.payload.as_str(), first.span),
            (Some(1), r#"{"i":1}"#, None)
        );
        logged.shutdown().await;
        kept.shutdown().await;
    }
}
