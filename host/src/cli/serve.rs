//! `plugbus serve`: a long-running host for agents written in any language.
//!
//! - `POST /events`: one JSON event, a JSON array of them, or JSON Lines; answers 202 with the
//!   assigned ids. With `--log`, the answer comes once every event of the
//!   request is durable under the log's policy, and carries their sequence
//!   numbers and the policy (`{"ids", "seqs", "durable": true, "durability"}`);
//!   with `--nats`, once the stream stored them (`{"ids", "stream_seqs",
//!   "durable": true, "durability": "nats"}`), or 503 with the reason: a
//!   request still unconfirmed once the host has been stopping for its
//!   grace period answers 503 "shutting down" instead of holding the
//!   shutdown up (the events may still be stored);
//!   503 if the log has failed. A request with any malformed line is refused whole (400,
//!   naming the line), so a client never has to guess what was accepted.
//!   CloudEvents 1.0 too: structured (`application/cloudevents+json`),
//!   batched (`application/cloudevents-batch+json`) and binary mode (`ce-*`
//!   headers); an invalid one is refused with 400 naming the attribute (see
//!   `plugbus::cloudevents` for the mapping). With `--schemas`, an event that
//!   does not fit its schema refuses the request with 422 `{"error", "index",
//!   "event", "path"}`.
//! - `GET /plugins`: state, subscriptions, counters, last error per plugin,
//!   and whether it exports `query` (`queryable`);
//!   with `--log`, the log's position (`log`: last, written and durable seq,
//!   queued, lost).
//! - `GET /plugins/<name>/dead-letters?offset=&limit=`: the events that
//!   made it fail hard (all kept: the log's journal, or on NATS the
//!   stream's bucket), a page at a time (1,000 by default) with `total` and
//!   `next_offset`; `POST /plugins/<name>/dead-letters/redrive` sends them
//!   to it again (after a fixed version was dropped into the directory);
//!   503 with `Retry-After` while it is quarantined.
//! - `GET /plugins/<name>/query?q=<urlencoded JSON>` and `POST
//!   /plugins/<name>/query` with a JSON body: asks a plugin that exports
//!   `query` (a read model); 200 `{"as_of_seq", "answer"}`. Errors are
//!   `{"error", "kind"}`: 400 a missing or malformed request, 404 no such
//!   plugin, 413 a request over 64 KiB, 422 the plugin refused, 500 it
//!   trapped, 501 it has no `query` export, 503 busy or shutting down, 504
//!   it ran out of query fuel or time.
//! - `POST /v1/traces`: OpenTelemetry spans over OTLP/HTTP (protobuf or
//!   JSON, gzip or not); GenAI spans become events (`plugbus::otlp`,
//!   docs/opentelemetry.md). Answers like `POST /events` once the events are
//!   durable or stored; a retried request is not stored twice. Also on
//!   `--otlp-listen ADDR` (the exporters' default port is 4318).
//! - `GET /metrics`: Prometheus (OpenMetrics) text.
//! - Any other path: 404; a route's wrong method: 405 with `Allow`. Every
//!   error answer is JSON, `{"error": …}`, axum's own rejections included
//!   (`json_errors`).
//! - Every route: what a web browser sends on behalf of another site (DNS
//!   rebinding, cross-site requests) is refused with 403 (`same_origin`).
//! - `GET /healthz`: liveness, from the moment the host listens.
//! - `GET /readyz`: readiness: 200 once every plugin of the directory at
//!   start is loaded or refused, 503 before; the body says which are still
//!   loading (`plugbus::StartupStatus`). The host listens at once and loads
//!   plugins in the background: with `--log`, events accepted meanwhile reach
//!   every plugin (read back from the log); without (or on NATS),
//!   `POST /events` and `/v1/traces` answer 503 with `Retry-After: 1` until
//!   ready.
//! - `GET /`: the live dashboard, and behind it `GET /dashboard/stream`,
//!   `/dashboard/snapshot`, the event export `GET /events/stream`
//!   (plugbus JSON or CloudEvents) and a run's timeline `GET
//!   /runs/<correlation id>/events` (from the log, else from the last
//!   `--history` events; see `cli::dashboard`).
//!
//! The plugin directory is watched (hot reload). SIGINT or SIGTERM stops
//! accepting requests, drains every plugin queue and exits 0.

use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::process::ExitCode;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::json;
use std::sync::Arc;

use plugbus::otlp::{Encoding, MapOptions, OtlpError, Receiver};

use super::dashboard::Dashboard;
use super::http_server;
use super::same_origin::{self, SameOrigin};
use super::{CacheArgs, LogArgs, OtlpArgs};

/// Largest request body: 1 MiB holds thousands of events per request while
/// bounding what one client can make the host buffer.
const MAX_BODY: usize = 1 << 20;

/// Events kept in memory without `--log` for the dashboard's run timelines:
/// minutes of a busy agent's activity; the history also stops at 64 MiB
/// (`Event::approx_bytes`), whatever the count.
pub const DEFAULT_HISTORY: usize = 10_000;

/// What `plugbus serve` is asked for on its command line.
pub struct Options<'a> {
    pub plugins: &'a FsPath,
    pub listen: SocketAddr,
    /// How long plugins may drain their queues at shutdown.
    pub grace: std::time::Duration,
    /// How long a client may leave a request's head or body unfinished
    /// (`http_server::DEFAULT_CLIENT_TIMEOUT`).
    pub client_timeout: std::time::Duration,
    pub cache: &'a CacheArgs,
    pub log: &'a LogArgs,
    pub otlp: &'a OtlpArgs,
    /// Events kept for [`plugbus::Bus::history`] when there is no log.
    pub history: usize,
    /// Host names the API answers to besides IP addresses and localhost.
    pub allow_hosts: &'a [String],
    /// Membership of a fleet's plugin set.
    pub fleet: &'a super::fleet::FleetArgs,
}

pub async fn serve(options: Options<'_>) -> anyhow::Result<ExitCode> {
    let Options {
        plugins,
        listen,
        grace,
        client_timeout,
        cache,
        log,
        otlp,
        history,
        allow_hosts,
        fleet,
    } = options;
    // With a log, run timelines are read from it: no copy in memory.
    let history = if log.dir.is_some() { 0 } else { history };
    // Listening at once: the plugins load in the background (`/readyz`).
    let started = std::time::Instant::now();
    // The fleet's set is installed before the bus loads anything.
    let member = super::fleet::join(fleet, log.nats.as_deref(), plugins, &log.registry, &log.trust).await?;
    // A fleet's host runs the set's version of a plugin or none.
    let bus = super::open_bus(plugins, true, cache, log, history, true, member.is_some()).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let otlp_listener = match otlp.otlp_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for OTLP on {addr}"))?,
        ),
        None => None,
    };
    let receiver = Arc::new(Receiver::new(MapOptions {
        all_spans: otlp.otlp_all,
    }));
    let addr = listener.local_addr()?;
    // Open dashboard streams never end by themselves: they end when this
    // turns true, so the graceful shutdown is not held up by a browser tab.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = Shutdown {
        stopping: stopping.clone(),
        grace,
    };
    let stop_signal = shutdown_signal();
    if let Some(mut member) = member {
        // A new version is loaded as this bus would load it (signature,
        // policy, world, manifest) before it replaces anything.
        let checker = bus.clone();
        member.set_load_check(Arc::new(move |path| {
            let bus = checker.clone();
            Box::pin(async move {
                bus.check_plugin(&path)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.kind.to_string())
            })
        }));
        let stopping = stopping.clone();
        let started = bus.clone();
        tokio::spawn(async move {
            // The set installed before the start is checked by the start-up
            // load itself: a version that did not load is reported.
            if started.ready().await.ready {
                let failures: Vec<_> = started
                    .load_failures()
                    .into_iter()
                    .map(|f| (f.path, f.reason))
                    .collect();
                member.started(&failures).await;
            }
            if let Err(e) = member.follow(stopping).await {
                tracing::error!(error = %e, "fleet: cannot follow the plugin set; this host keeps its plugins as they are");
            }
        });
    }
    let dashboard = Dashboard::start(&bus, history, stopping.clone());
    let app = router(bus.clone(), shutdown.clone(), receiver.clone())
        .merge(dashboard.routes())
        .fallback(no_such_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            SameOrigin::new(addr.ip(), allow_hosts),
            same_origin::guard,
        ))
        // The largest body a route takes: an OTLP export's.
        .layer(axum::middleware::from_fn(move |request, next| {
            http_server::bounded_body(MAX_BODY.max(plugbus::otlp::MAX_BODY), client_timeout, request, next)
        }));
    eprintln!(
        "plugbus: listening on http://{addr} (plugins in {}; dashboard at /)",
        plugins.display()
    );
    let announcer = bus.clone();
    tokio::spawn(async move {
        let status = announcer.ready().await;
        if status.ready {
            super::report_skipped(&announcer);
            eprintln!(
                "plugbus: ready: {} plugins loaded, {} skipped, in {} ms",
                status.loaded,
                status.failed,
                started.elapsed().as_millis()
            );
        }
    });
    // The OTLP listener, when asked for: the trace route alone, stopped
    // with the main one.
    let otlp_server = otlp_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            eprintln!("plugbus: OTLP/HTTP on http://{addr}/v1/traces");
        }
        let rules = SameOrigin::new(listener.local_addr().map_or(addr.ip(), |a| a.ip()), allow_hosts);
        let app = otlp_router(bus.clone(), shutdown, receiver)
            .layer(axum::middleware::from_fn_with_state(rules, same_origin::guard))
            .layer(axum::middleware::from_fn(move |request, next| {
                http_server::bounded_body(plugbus::otlp::MAX_BODY, client_timeout, request, next)
            }));
        let mut stopping = stopping.clone();
        tokio::spawn(http_server::serve(listener, app, client_timeout, async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        }))
    });
    let server = http_server::serve(listener, app, client_timeout, async move {
        stop_signal.await;
        let _ = stopping_tx.send(true);
    });
    // Requests in flight at the signal may finish within the grace period;
    // one that never ends (a client that sent half a body and waits) must
    // not hold the shutdown: past it, the server stops waiting for them
    // (their tasks end with the process).
    let grace_over = {
        let mut stopping = stopping.clone();
        async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(grace).await;
        }
    };
    tokio::select! {
        served = server => served.context("HTTP server failed")?,
        () = grace_over => eprintln!("plugbus: requests still open after the grace period; closing their connections"),
    }
    if let Some(server) = otlp_server {
        match tokio::time::timeout(grace, server).await {
            Ok(Ok(result)) => result.context("OTLP HTTP server failed")?,
            Ok(Err(e)) => anyhow::bail!("OTLP HTTP server failed: {e}"),
            Err(_) => eprintln!("plugbus: OTLP requests still open after the grace period; closing their connections"),
        }
    }
    drop(dashboard);
    eprintln!("plugbus: shutting down; draining plugin queues");
    // No more requests, and (on NATS) no more pulls: what this host took
    // finishes and is acknowledged. Then queued events and their follow-ups
    // run within the grace period, and the workers stop with what is left.
    let started = std::time::Instant::now();
    let _ = tokio::time::timeout(grace, bus.stop_pulling()).await;
    let _ = tokio::time::timeout(grace.saturating_sub(started.elapsed()), bus.flush()).await;
    let report = bus.shutdown_with(grace.saturating_sub(started.elapsed())).await;
    for p in &report.plugins {
        eprintln!(
            "plugbus: {}: delivered {}, dropped {}",
            p.name, p.stats.delivered, p.stats.dropped
        );
    }
    if report.dropped > 0 {
        eprintln!("plugbus: grace period over: {} queued events dropped", report.dropped);
    }
    Ok(ExitCode::SUCCESS)
}

/// What a request handler knows of the host's shutdown: whether it began
/// (SIGTERM), and the grace period a request may still take after it.
#[derive(Clone)]
struct Shutdown {
    stopping: tokio::sync::watch::Receiver<bool>,
    grace: std::time::Duration,
}

impl Shutdown {
    /// Resolves once the host has been stopping for the grace period
    /// (never, while it runs).
    async fn grace_over(mut self) {
        if self.stopping.wait_for(|stopping| *stopping).await.is_err() {
            // The sender is gone only once serving ended.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.grace).await;
    }
}

fn router(bus: plugbus::Bus, shutdown: Shutdown, receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/events", post(post_events))
        .route(
            "/v1/traces",
            post(post_traces).layer(DefaultBodyLimit::max(plugbus::otlp::MAX_BODY)),
        )
        .route("/plugins", get(get_plugins))
        .route("/plugins/{name}/dead-letters", get(get_dead_letters))
        .route("/plugins/{name}/dead-letters/redrive", post(post_redrive))
        .route("/plugins/{name}/query", get(get_query).post(post_query))
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(get_readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::Extension(shutdown))
        .layer(axum::Extension(receiver))
        .with_state(bus)
}

/// 404 for a path no route serves, in JSON like every other error.
async fn no_such_route(uri: axum::http::Uri) -> Response {
    let path = plugbus::text::printable(uri.path()).into_owned();
    (
        StatusCode::NOT_FOUND,
        Json(
            json!({ "error": format!("no such route: {path} (the routes are listed in the README, `plugbus serve`)") }),
        ),
    )
        .into_response()
}

/// 405 for a route that does not take the request's method (axum adds the
/// `Allow` header naming those it takes).
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = plugbus::text::printable(uri.path()).into_owned();
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "error": format!("{method} is not allowed on {path} (see the Allow header)") })),
    )
        .into_response()
}

/// Largest plain-text error body rewritten as JSON by [`json_errors`]: an
/// extractor's rejection is one line; anything longer is left as it is.
const MAX_PLAIN_ERROR: usize = 4096;

/// Rewrites a plain-text error answer (axum's extractors reject a body
/// over its limit, bad UTF-8, a malformed path with text) as
/// `{"error": text}`, so that every error of the API is JSON. Its status
/// and other headers (`Allow`, `Retry-After`) are kept.
async fn json_errors(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/plain"));
    if response.status().as_u16() < 400 || !plain {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(text) = axum::body::to_bytes(body, MAX_PLAIN_ERROR).await else {
        return (parts.status, Json(json!({ "error": parts.status.to_string() }))).into_response();
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let error = String::from_utf8_lossy(&text).trim().to_owned();
    let mut json = Json(json!({ "error": error })).into_response();
    let json_headers = std::mem::take(json.headers_mut());
    parts.headers.extend(json_headers);
    Response::from_parts(parts, json.into_body())
}

/// The routes of `--otlp-listen`: traces, and liveness for probes.
fn otlp_router(bus: plugbus::Bus, shutdown: Shutdown, receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/v1/traces", post(post_traces))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(get_readyz))
        .layer(DefaultBodyLimit::max(plugbus::otlp::MAX_BODY))
        .layer(axum::Extension(shutdown))
        .layer(axum::Extension(receiver))
        .with_state(bus)
}

/// `POST /v1/traces`: one OTLP export request. 200 with the
/// `ExportTraceServiceResponse` (a partial success names refused spans) in
/// the request's encoding; errors carry a `google.rpc.Status` (protobuf) or
/// `{"code", "message"}` (JSON) with the reason.
async fn post_traces(
    State(bus): State<plugbus::Bus>,
    axum::Extension(shutdown): axum::Extension<Shutdown>,
    axum::Extension(receiver): axum::Extension<Arc<Receiver>>,
    headers: axum::http::HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let content_encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok());
    // A body over the route's limit (or cut short) is refused like any other
    // bad request: a `google.rpc.Status` in the request's encoding, not
    // axum's plain-text rejection.
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let error = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                OtlpError::TooLarge(format!("the body is over {} bytes", plugbus::otlp::MAX_BODY))
            } else {
                OtlpError::Malformed(format!("the body cannot be read: {}", rejection.body_text()))
            };
            receiver.refused(&error);
            return otlp_error(&error, Encoding::of(content_type).unwrap_or(Encoding::Json));
        }
    };
    if let Some(reason) = still_starting(&bus) {
        let encoding = Encoding::of(content_type).unwrap_or(Encoding::Json);
        return retry_later(otlp_error(&OtlpError::Unavailable(reason), encoding));
    }
    let (encoding, export) = tokio::select! {
        export = receiver.export_http(&bus, &body, content_type, content_encoding) => export,
        () = shutdown.grace_over() => (
            Encoding::of(content_type).unwrap_or(Encoding::Json),
            Err(OtlpError::Unavailable("the host is shutting down".into())),
        ),
    };
    match export {
        Ok(export) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoding.content_type())],
            export.response_body(encoding),
        )
            .into_response(),
        Err(e) => otlp_error(&e, encoding),
    }
}

fn otlp_error(error: &OtlpError, encoding: Encoding) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CONTENT_TYPE, encoding.content_type())],
        plugbus::otlp::error_body(error, encoding),
    )
        .into_response()
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when it is first polled: a signal sent as soon as the host
/// says it listens is a graceful stop, never the default kill.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (interrupt, terminate) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {},
                        _ = terminate.recv() => {},
                    }
                }
                // No signal handling on this system: Ctrl-C at least.
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `GET /readyz`: 200 once every plugin of the directory at start is
/// loaded or refused, 503 before; the body is the start-up status either way.
async fn get_readyz(State(bus): State<plugbus::Bus>) -> Response {
    let status = bus.startup();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(status)).into_response()
}

/// While plugins load, an event the still-loading ones would never see
/// (no log to read it back from) is refused: `Some(reason)`. `None`: go ahead.
fn still_starting(bus: &plugbus::Bus) -> Option<String> {
    let status = bus.startup();
    if status.ready || status.catches_up {
        return None;
    }
    Some(format!(
        "starting: {} plugins still loading and no event log to catch them up from; retry shortly",
        status.loading.len()
    ))
}

/// `response` as 503 with `Retry-After: 1`: the answer clients and OTLP
/// exporters retry on.
fn retry_later(mut response: Response) -> Response {
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": reason }))).into_response()
}

/// The events of a `POST /events` body: CloudEvents by content type (or
/// `ce-*` headers), else plugbus's own JSON or JSON Lines.
fn events_of(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<Vec<plugbus::Event>, String> {
    use plugbus::cloudevents;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let essence = content_type
        .map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if essence == "application/cloudevents-batch+json" {
        return cloudevents::from_batch(body).map_err(|e| e.to_string());
    }
    if essence == "application/cloudevents+json" {
        return cloudevents::from_structured(body)
            .map(|e| vec![e])
            .map_err(|e| e.to_string());
    }
    // Binary mode: `ce-specversion` says so; the other required attributes
    // without it are a CloudEvent missing its version, refused as one
    // (rather than read as plugbus JSON and refused for a missing `name`).
    if ["ce-specversion", "ce-type", "ce-id", "ce-source"]
        .iter()
        .any(|h| headers.contains_key(*h))
    {
        let ce_headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
        return cloudevents::from_binary(ce_headers, content_type, body)
            .map(|e| vec![e])
            .map_err(|e| e.to_string());
    }
    let body = std::str::from_utf8(body).map_err(|e| format!("the body is not UTF-8: {e}"))?;
    // A byte-order mark opens the text, not the first event.
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    // A JSON array of events, one JSON object (possibly pretty-printed), or
    // one object per line (JSON Lines).
    if body.trim_start().starts_with('[') {
        let items: Vec<serde_json::Value> =
            serde_json::from_str(body).map_err(|e| format!("the body is not a JSON array of events: {e}"))?;
        return items
            .into_iter()
            .enumerate()
            .map(|(i, item)| plugbus::parse_event_value(item).map_err(|e| format!("event {i}: {e}")))
            .collect();
    }
    match serde_json::from_str::<serde_json::Value>(body) {
        // One whole JSON value: its own error, not a line's.
        Ok(value) => plugbus::parse_event_value(value)
            .map(|e| vec![e])
            .map_err(|e| e.to_string()),
        Err(_) => body
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| plugbus::parse_event_line(line).map_err(|e| format!("line {}: {e}", i + 1)))
            .collect(),
    }
}

async fn post_events(
    State(bus): State<plugbus::Bus>,
    axum::Extension(shutdown): axum::Extension<Shutdown>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = compressed("POST /events", &headers) {
        return refused;
    }
    let events = match events_of(&headers, &body) {
        Ok(events) => events,
        Err(reason) => return bad_request(reason),
    };
    // The host's own announcements (a plugin loaded or quarantined, the
    // log's overflow) are its alone: a client posting one would make an
    // observer (webhook-alert on `plugbus.plugin.quarantined`) act on a
    // fake. The request is refused whole.
    if let Some((index, event)) = events
        .iter()
        .enumerate()
        .find(|(_, e)| e.name().starts_with("plugbus."))
    {
        let reason = format!(
            "event {index}: `{}`: names under `plugbus.` are the host's own announcements; an event from outside may not take one",
            event.name()
        );
        return bad_request(reason);
    }
    // Schemas: the request is refused whole, naming the event and the path.
    for (index, event) in events.iter().enumerate() {
        if let Err(e) = bus.check_schema(event) {
            let body = json!({ "error": e.to_string(), "index": index, "event": e.event, "path": e.path });
            return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
        }
    }
    if events.is_empty() {
        return bad_request("no events in the request body".into());
    }
    if let Some(reason) = still_starting(&bus) {
        return retry_later(Json(json!({ "error": reason })).into_response());
    }
    // On NATS, acknowledge once the stream has stored every event of the
    // request: then they outlive this host.
    if bus.nats_status().is_some() {
        let ids: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
        // The graceful shutdown waits for this request: once its grace is
        // spent, answer rather than hold the shutdown up (a server that
        // does not answer would keep it for every publish attempt).
        let stored = tokio::select! {
            stored = bus.publish_to_stream(events) => stored,
            () = shutdown.grace_over() => {
                let reason = "the host is shutting down and the stream has not confirmed the events yet; \
                              they may still be stored (CloudEvents retried with the same ids are stored once)";
                return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": reason, "ids": ids }))).into_response();
            }
        };
        return match stored {
            Ok(seqs) => (
                StatusCode::ACCEPTED,
                Json(json!({ "ids": ids, "stream_seqs": seqs, "durable": true, "durability": "nats" })),
            )
                .into_response(),
            // No retry could store it: not a 503 a client would retry.
            Err(e @ plugbus::LogError::TooLargeForStream(..)) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({ "error": e.to_string(), "ids": ids })),
            )
                .into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e.to_string() }))).into_response(),
        };
    }
    if bus.event_log().is_none() {
        let ids: Vec<String> = events.into_iter().map(|e| bus.publish(e).id().to_owned()).collect();
        return (StatusCode::ACCEPTED, Json(json!({ "ids": ids }))).into_response();
    }
    // With a log, acknowledge once every event of the request is durable.
    let durability = bus.log_status().map(|s| s.durability);
    match bus.publish_durable_all(events).await {
        Ok(events) => {
            let ids: Vec<&str> = events.iter().map(|e| e.id()).collect();
            let seqs: Vec<Option<u64>> = events.iter().map(|e| e.seq()).collect();
            (
                StatusCode::ACCEPTED,
                Json(json!({ "ids": ids, "seqs": seqs, "durable": true, "durability": durability })),
            )
                .into_response()
        }
        Err(e @ plugbus::LogError::TooLarge { limit, .. }) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({ "error": e.to_string(), "limit_bytes": limit })),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e.to_string() }))).into_response(),
    }
}

async fn get_plugins(State(bus): State<plugbus::Bus>) -> Response {
    Json(json!({
        "plugins": bus.plugins(),
        "load_failures": bus.load_failures(),
        "startup": bus.startup(),
        "log": bus.log_status(),
        "nats": bus.nats_status(),
    }))
    .into_response()
}

/// Letters in one answer of `GET /plugins/<name>/dead-letters` unless
/// `limit` says otherwise: a journal may hold any number (a plugin that
/// failed on a whole backlog), and an answer holding every one of them,
/// payloads and all, could run to gigabytes.
const LETTERS_PAGE: usize = 1000;

/// The most `limit` may ask for in one answer.
const MAX_LETTERS_PAGE: usize = 10_000;

/// `?offset=&limit=` of `GET /plugins/<name>/dead-letters`.
#[derive(serde::Deserialize)]
struct LettersPage {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// A page of the plugin's letters, oldest first: `dead_letters`, `total`
/// and `next_offset` (`null` on the last page).
async fn get_dead_letters(
    State(bus): State<plugbus::Bus>,
    Path(name): Path<String>,
    page: Result<Query<LettersPage>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let page = match page {
        Ok(Query(page)) => page,
        Err(e) => return bad_request(format!("malformed query string (offset, limit: numbers): {e}")),
    };
    let limit = page.limit.unwrap_or(LETTERS_PAGE);
    if !(1..=MAX_LETTERS_PAGE).contains(&limit) {
        return bad_request(format!("limit must be 1 to {MAX_LETTERS_PAGE}, not {limit}"));
    }
    match bus.kept_dead_letters(&name).await {
        Some(Ok(letters)) => {
            let total = letters.len();
            let start = page.offset.min(total);
            let end = start.saturating_add(limit).min(total);
            let next = (end < total).then_some(end);
            Json(json!({
                "plugin": name,
                "dead_letters": &letters[start..end],
                "total": total,
                "offset": start,
                "next_offset": next,
            }))
            .into_response()
        }
        Some(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": format!("dead letters of `{name}`: {e}") })),
        )
            .into_response(),
        None => not_loaded(&bus, &name),
    }
}

async fn post_redrive(State(bus): State<plugbus::Bus>, Path(name): Path<String>) -> Response {
    // A quarantined plugin drops what it is sent until its backoff is over:
    // a redrive now would send every letter to be dropped (they stay
    // letters). Said at once, with when to come back.
    let quarantined = bus
        .plugins()
        .into_iter()
        .find(|p| p.name == name)
        .filter(|p| p.state == plugbus::PluginState::Quarantined)
        .and_then(|p| p.quarantine_retry_in_ms)
        .filter(|ms| *ms > 0);
    if let Some(ms) = quarantined {
        let retry = ms.div_ceil(1000).max(1).to_string();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, retry)],
            Json(json!({
                "error": format!("plugin `{name}` is quarantined for another {ms} ms: a redrive now would only drop its letters (they stay letters); retry then, or load a fixed version"),
                "kind": "quarantined",
            })),
        )
            .into_response();
    }
    match bus.redrive(&name).await {
        Some(report) => Json(json!({ "plugin": name, "redrive": report })).into_response(),
        None => not_loaded(&bus, &name),
    }
}

/// The answer for plugin `name` that is not loaded: 503 with `Retry-After`
/// while its file is still loading at start (it will be there shortly, as
/// `POST /events` answers then), else 404.
fn not_loaded(bus: &plugbus::Bus, name: &str) -> Response {
    // No plugin name is longer than 64 characters: a longer one is cut
    // rather than echoed whole.
    let shown: String = match name.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &name[..cut]),
        None => name.to_owned(),
    };
    let loading = bus
        .startup()
        .loading
        .iter()
        .any(|file| file.file_stem().is_some_and(|stem| stem == name));
    if loading {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            Json(json!({ "error": format!("plugin `{shown}` is still loading; retry shortly"), "kind": "loading" })),
        )
            .into_response();
    }
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": format!("no plugin named `{shown}` is loaded"), "kind": "unknown_plugin" })),
    )
        .into_response()
}

/// `?q=` of `GET /plugins/<name>/query`.
#[derive(serde::Deserialize)]
struct QueryParams {
    q: Option<String>,
}

async fn get_query(
    State(bus): State<plugbus::Bus>,
    Path(name): Path<String>,
    params: Result<Query<QueryParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match params {
        Ok(Query(QueryParams { q: Some(q) })) => answer_query(&bus, &name, &q).await,
        Ok(_) => {
            bad_request("missing `q`: the query as URL-encoded JSON, e.g. ?q=%7B%22run%22%3A%22run-42%22%7D".into())
        }
        Err(e) => bad_request(format!("malformed query string: {e}")),
    }
}

async fn post_query(
    State(bus): State<plugbus::Bus>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    if let Some(refused) = compressed("a query", &headers) {
        return refused;
    }
    answer_query(&bus, &name, &body).await
}

/// 415 for a body with a `Content-Encoding` (other than `identity`): a
/// compressed body is not JSON text, so it is refused by name, as
/// `/v1/traces` refuses an encoding it does not take, instead of failing as
/// bad UTF-8 or being read as text.
fn compressed(route: &str, headers: &axum::http::HeaderMap) -> Option<Response> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e != "identity")?;
    let reason = format!("unsupported content encoding {encoding}: {route} takes an uncompressed body");
    Some((StatusCode::UNSUPPORTED_MEDIA_TYPE, Json(json!({ "error": reason }))).into_response())
}

/// Checks the request is JSON, asks the plugin, maps a [`plugbus::QueryError`]
/// to its status code.
async fn answer_query(bus: &plugbus::Bus, name: &str, request: &str) -> Response {
    use plugbus::QueryError as E;
    if request.len() > plugbus::query::MAX_QUERY_REQUEST_BYTES {
        let e = E::TooLarge(request.len());
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({ "error": e.to_string(), "kind": e.kind() })),
        )
            .into_response();
    }
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(request) {
        return bad_request(format!("the query is not JSON: {e}"));
    }
    match bus.query(name, request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(E::UnknownPlugin(_)) => not_loaded(bus, name),
        Err(e) => {
            let status = match &e {
                E::UnknownPlugin(_) => StatusCode::NOT_FOUND,
                E::NoQueryExport(_) => StatusCode::NOT_IMPLEMENTED,
                E::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                E::Plugin { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                E::Limit { .. } => StatusCode::GATEWAY_TIMEOUT,
                E::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                E::Busy(_) | E::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            (status, Json(json!({ "error": e.to_string(), "kind": e.kind() }))).into_response()
        }
    }
}

async fn get_metrics(
    State(bus): State<plugbus::Bus>,
    axum::Extension(receiver): axum::Extension<Arc<Receiver>>,
) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BusMetrics(bus, receiver)));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")).into_response(),
    }
}

/// Reads the bus's counters at scrape time.
#[derive(Debug)]
struct BusMetrics(plugbus::Bus, Arc<Receiver>);

impl Collector for BusMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let plugins = self.0.plugins();
        let published = prometheus_client::metrics::counter::ConstCounter::new(self.0.published());
        published.encode(encoder.encode_descriptor(
            "plugbus_events_published",
            "Events published on the bus, by the host and by plugins",
            None,
            MetricType::Counter,
        )?)?;
        // Alerting on a plugin that did not load, or a replacement that was
        // refused (the old version keeps running), needs no log scraping.
        let failures = u64::try_from(self.0.load_failures().len()).unwrap_or(u64::MAX);
        prometheus_client::metrics::gauge::ConstGauge::new(failures).encode(encoder.encode_descriptor(
            "plugbus_load_failures",
            "Plugin files that are not running as they are on disk: failed to load, or a replacement refused",
            None,
            MetricType::Gauge,
        )?)?;
        type Field = fn(&plugbus::PluginStats) -> u64;
        let counters: [(&str, &str, Field); 8] = [
            ("plugbus_plugin_delivered", "Events the plugin ran", |s| s.delivered),
            ("plugbus_plugin_ok", "Events the plugin accepted", |s| s.ok),
            (
                "plugbus_plugin_errors",
                "Events for which the plugin returned an error",
                |s| s.errors,
            ),
            (
                "plugbus_plugin_dropped",
                "Events dropped for the plugin (queue full, unloaded)",
                |s| s.dropped,
            ),
            ("plugbus_plugin_restarts", "Instances rebuilt after a failure", |s| {
                s.restarts
            }),
            ("plugbus_plugin_fuel_consumed", "Fuel burned by the plugin", |s| {
                s.fuel_consumed
            }),
            (
                "plugbus_plugin_queries",
                "Queries the plugin answered or refused",
                |s| s.queries,
            ),
            (
                "plugbus_plugin_query_failures",
                "Queries that failed hard (trap, fuel, deadline)",
                |s| s.query_failures,
            ),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &plugins {
                let labels = [("plugin", p.name.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&field(&p.stats), None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "plugbus_plugin_failures",
            "Hard failures of the plugin, by kind",
            None,
            MetricType::Counter,
        )?;
        for p in &plugins {
            for (kind, n) in p.stats.failures.iter() {
                let labels = [("plugin", p.name.as_str()), ("kind", kind)];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        use plugbus::PluginState::{Quarantined, Ready};
        for (name, help, state) in [
            ("plugbus_plugin_ready", "1 when the plugin has a live instance", Ready),
            (
                "plugbus_plugin_quarantined",
                "1 while the plugin is quarantined after repeated failures",
                Quarantined,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in &plugins {
                let value = i64::from(p.state == state);
                family
                    .encode_family(&[("plugin", p.name.as_str())])?
                    .encode_gauge(&value)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "plugbus_plugin_http_requests",
            "Outbound requests of plugins with an [http] grant, by outcome: sent (a response), refused (a rule; never sent), failed (connect, timeout, TLS, body size), replayed (answered from the request journal)",
            None,
            MetricType::Counter,
        )?;
        for p in &plugins {
            let Some(h) = &p.http else { continue };
            for (outcome, n) in [
                ("sent", h.sent),
                ("refused", h.refused),
                ("failed", h.failed),
                ("replayed", h.replayed),
            ] {
                family
                    .encode_family(&[("plugin", p.name.as_str()), ("outcome", outcome)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        for (name, help, field) in [
            (
                "plugbus_plugin_http_bytes_out",
                "Request body bytes plugins sent",
                (|h: &plugbus::http::HttpCounts| h.bytes_out) as fn(&plugbus::http::HttpCounts) -> u64,
            ),
            (
                "plugbus_plugin_http_bytes_in",
                "Response body bytes plugins received",
                |h| h.bytes_in,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &plugins {
                let Some(h) = &p.http else { continue };
                family
                    .encode_family(&[("plugin", p.name.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&field(h), None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "plugbus_plugin_memory_bytes",
            "Linear memory held by the plugin's instance",
            None,
            MetricType::Gauge,
        )?;
        for p in &plugins {
            let bytes = i64::try_from(p.stats.memory_bytes).unwrap_or(i64::MAX);
            family
                .encode_family(&[("plugin", p.name.as_str())])?
                .encode_gauge(&bytes)?;
        }
        let mut family = encoder.encode_descriptor(
            "plugbus_plugin_handler_seconds",
            "Time the plugin took per event",
            None,
            MetricType::Histogram,
        )?;
        for p in &plugins {
            let h = &p.stats.latency;
            let buckets: Vec<(f64, u64)> = plugbus::LATENCY_BOUNDS
                .iter()
                .copied()
                .chain([f64::MAX]) // the text encoder writes f64::MAX as +Inf
                .zip(h.buckets.iter().copied())
                .collect();
            family
                .encode_family(&[("plugin", p.name.as_str())])?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "plugbus_plugin_http_request_seconds",
            "Time plugins' outbound requests took (sent or failed), connect to last body byte",
            None,
            MetricType::Histogram,
        )?;
        for p in &plugins {
            let Some(h) = &p.http else { continue };
            let buckets: Vec<(f64, u64)> = plugbus::http::LATENCY_BOUNDS_MS
                .iter()
                .map(|ms| *ms as f64 / 1e3)
                .chain([f64::MAX]) // +Inf
                .zip(h.latency_ms.iter().copied())
                .collect();
            let count = h.latency_ms.iter().sum();
            family
                .encode_family(&[("plugin", p.name.as_str())])?
                .encode_histogram::<NoLabelSet>(h.latency_sum_us as f64 / 1e6, count, &buckets, None)?;
        }
        let otlp = self.1.stats();
        let mut family = encoder.encode_descriptor(
            "plugbus_otlp_spans",
            "OTLP spans received, by outcome (mapped to events, dropped as not GenAI, rejected)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [
            ("mapped", otlp.mapped),
            ("dropped", otlp.dropped),
            ("rejected", otlp.rejected),
        ] {
            family
                .encode_family(&[("outcome", outcome)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "plugbus_otlp_requests",
            "OTLP export requests, by outcome (ok, failed: 4xx or 5xx)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [("ok", otlp.requests), ("failed", otlp.failed_requests)] {
            family
                .encode_family(&[("outcome", outcome)])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        for (name, help, value) in [
            ("plugbus_otlp_events", "Events published from OTLP spans", otlp.events),
            (
                "plugbus_otlp_duplicates",
                "Events from OTLP spans skipped as repeats of events already taken (exporter retries)",
                otlp.duplicates,
            ),
            (
                "plugbus_otlp_invalid_attributes",
                "Span attributes with a wrong type or out of range, left out of the events",
                otlp.invalid_attributes,
            ),
        ] {
            prometheus_client::metrics::counter::ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        if let Some(log) = self.0.log_status() {
            prometheus_client::metrics::counter::ConstCounter::new(log.lost).encode(encoder.encode_descriptor(
                "plugbus_log_lost",
                "Events delivered live but not written to the event log (buffer full or log failed)",
                None,
                MetricType::Counter,
            )?)?;
            for (name, help, value) in [
                (
                    "plugbus_log_last_seq",
                    "Highest sequence number handed to an event",
                    log.last_seq,
                ),
                (
                    "plugbus_log_written_seq",
                    "Highest sequence number written to the log file",
                    log.written_seq,
                ),
                (
                    "plugbus_log_durable_seq",
                    "Highest sequence number durable under the log's policy",
                    log.durable_seq,
                ),
                (
                    "plugbus_log_queued",
                    "Events waiting for the log writer",
                    log.queued as u64,
                ),
            ] {
                let value = i64::try_from(value).unwrap_or(i64::MAX);
                encoder
                    .encode_descriptor(name, help, None, MetricType::Gauge)?
                    .encode_gauge(&value)?;
            }
        }
        if let Some(cache) = self.0.cache_stats() {
            for (name, help, n) in [
                (
                    "plugbus_cache_hits",
                    "Plugins loaded from a cached compiled artifact",
                    cache.hits,
                ),
                (
                    "plugbus_cache_misses",
                    "Plugins compiled because nothing was cached",
                    cache.misses,
                ),
                (
                    "plugbus_cache_discarded",
                    "Cached artifacts found corrupt and rebuilt",
                    cache.discarded,
                ),
            ] {
                prometheus_client::metrics::counter::ConstCounter::new(n).encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Counter,
                )?)?;
            }
        }
        if let Some(nats) = self.0.nats_status() {
            encode_nats(&nats, &mut encoder)?;
        }
        Ok(())
    }
}

/// The NATS publisher's counters and each plugin consumer's.
fn encode_nats(nats: &plugbus::NatsStatus, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let p = &nats.publish;
    for (name, help, n) in [
        ("plugbus_nats_published", "Events the stream acknowledged", p.acked),
        (
            "plugbus_nats_publish_duplicates",
            "Publishes the stream answered as duplicates",
            p.duplicates,
        ),
        ("plugbus_nats_publish_retries", "Publish attempts retried", p.retries),
        (
            "plugbus_nats_publish_failed",
            "Events given up after every publish attempt failed",
            p.failed,
        ),
        (
            "plugbus_nats_publish_dropped",
            "Events dropped because the publish queue was full",
            p.dropped,
        ),
    ] {
        prometheus_client::metrics::counter::ConstCounter::new(n).encode(encoder.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?)?;
    }
    type Field = fn(&plugbus::nats::ConsumerStats) -> u64;
    let counters: [(&str, &str, Field); 9] = [
        (
            "plugbus_nats_consumer_acked",
            "Messages this host acknowledged as handled",
            |c| c.acked,
        ),
        (
            "plugbus_nats_consumer_nakked",
            "Messages this host handed back (Nak)",
            |c| c.nakked,
        ),
        (
            "plugbus_nats_consumer_terminated",
            "Messages this host ended (Term)",
            |c| c.terminated,
        ),
        (
            "plugbus_nats_consumer_redelivered",
            "Redelivered messages this host took",
            |c| c.redelivered,
        ),
        (
            "plugbus_nats_consumer_follow_ups_not_stored",
            "Messages handed back (Nak) because a follow-up they caused was not stored",
            |c| c.follow_ups_not_stored,
        ),
        (
            "plugbus_nats_consumer_max_deliveries",
            "MAX_DELIVERIES advisories: messages the server gave up after their last delivery",
            |c| c.max_deliveries,
        ),
        (
            "plugbus_nats_consumer_terminated_advisories",
            "MSG_TERMINATED advisories for this consumer, by any host",
            |c| c.terminated_advisories,
        ),
        (
            "plugbus_nats_consumer_dead_letters",
            "Dead letters this host stored in the stream's bucket",
            |c| c.dead_letters,
        ),
        (
            "plugbus_nats_consumer_dead_letters_not_stored",
            "Dead letters this host could not store in time (the Term became a Nak; on a last delivery the advisory tries again)",
            |c| c.dead_letters_not_stored,
        ),
    ];
    for (name, help, field) in counters {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (plugin, c) in &nats.consumers {
            family
                .encode_family(&[("plugin", plugin.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&field(c), None)?;
        }
    }
    let gauges: [(&str, &str, Field); 2] = [
        (
            "plugbus_nats_consumer_pending",
            "Messages not yet delivered (from the server)",
            |c| c.pending,
        ),
        (
            "plugbus_nats_consumer_ack_pending",
            "Messages delivered and not yet acknowledged, over all hosts (from the server)",
            |c| c.ack_pending,
        ),
    ];
    for (name, help, field) in gauges {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (plugin, c) in &nats.consumers {
            let value = i64::try_from(field(c)).unwrap_or(i64::MAX);
            family
                .encode_family(&[("plugin", plugin.as_str())])?
                .encode_gauge(&value)?;
        }
    }
    Ok(())
}
