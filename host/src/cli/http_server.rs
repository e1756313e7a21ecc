//! The HTTP server under `plugbus serve`: the router on hyper's HTTP/1
//! connections, with the timeouts `axum::serve` does not set, so a client
//! that starts a request and never finishes it holds a connection (a task
//! and a socket) for seconds, not forever.
//!
//! The client timeout (`--client-timeout-ms`, default
//! [`DEFAULT_CLIENT_TIMEOUT`]) bounds both waits on a client:
//! - a request's head (request line and headers) must arrive within it of
//!   the connection being ready for one (accepted, or its last response
//!   sent): so a kept-alive connection left idle is closed after as long,
//!   as nginx and Apache close theirs (clients open a new one);
//! - each part of a request's body must arrive within it of the previous
//!   one, and the body as a whole within it plus one second per
//!   [`MIN_BODY_RATE`] bytes received (Apache's `mod_reqtimeout` rule: a
//!   client trickling a byte just inside the wait for each part would
//!   otherwise hold the connection for as long as the body's size allows);
//!   past either the request fails (400, naming the rule) and nothing of it
//!   is used.
//! - A body declared (`Content-Length`) larger than any route takes is
//!   refused at once with 413, before any of it is read: the route sees a
//!   body over its limit (http-body-util's `LengthLimitError`, which axum
//!   answers 413), so it answers in its own format (OTLP's `Status`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a client may take to send a request's head, how long an idle
/// kept-alive connection stays open, and the longest wait for the next part
/// of a body: 30 s, hyper's own head timeout once a timer is set (nginx
/// waits 60 s for either). No client of this API (exporters, agents, the
/// dashboard) needs more on any network, and a body is at most 16 MiB (an
/// OTLP export).
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The slowest a request body may arrive, in bytes per second, once the
/// client timeout has passed since the route began reading it: 500 B/s,
/// Apache's `mod_reqtimeout` default. A 16 MiB OTLP export on a link that
/// slow would take nine hours; every real client sends far faster, while a
/// client trickling bytes to hold connections open must now pay bandwidth
/// for the time it holds them.
pub const MIN_BODY_RATE: u64 = 500;

/// Serves `app` on `listener` until `stop` resolves, then stops accepting
/// and lets each open connection finish its request in flight (the caller
/// bounds how long). Answers no request itself: the router does.
///
/// # Errors
/// Never: a failed accept (out of file descriptors, say) is logged and
/// retried a moment later, as `axum::serve` does; the result leaves room
/// for failures to come.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    client_timeout: Duration,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(client_timeout);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, mostly: wait for some to close
                // (or for the stop).
                tracing::error!(error = %e, "cannot accept a connection; trying again in 1 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut stop => break,
                }
            }
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failure of one connection, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Middleware: refuses a body declared larger than `largest` (413, before
/// reading it) and fails one whose next part takes longer than `idle`, or
/// which arrives slower than [`MIN_BODY_RATE`] once `idle` has passed.
pub async fn bounded_body(largest: usize, idle: Duration, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|d| d > largest as u64) {
        // A body whose first part is over a limit of 0: what the route's
        // own limit would find after reading `largest` bytes, found now.
        let over = http_body_util::Limited::new(http_body_util::Full::new(Bytes::from_static(b" ")), 0);
        return next.run(request.map(|_| Body::new(over))).await;
    }
    next.run(request.map(|body| Body::new(SlowBodyTimeout::new(body, idle))))
        .await
}

/// A request body that fails when its next part does not arrive within
/// `idle` of the previous one, or when the whole of it has taken longer
/// than `idle` plus a second per [`MIN_BODY_RATE`] bytes received. Both
/// clocks start at the handler's first read (not before the handler reads,
/// nor before an `Expect: 100-continue` client was told to send).
struct SlowBodyTimeout {
    inner: Body,
    idle: Duration,
    /// When the handler first asked for a part.
    started: Option<tokio::time::Instant>,
    /// When the last part arrived (or the first read, before any).
    last_part: tokio::time::Instant,
    received: u64,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SlowBodyTimeout {
    fn new(inner: Body, idle: Duration) -> SlowBodyTimeout {
        SlowBodyTimeout {
            inner,
            idle,
            started: None,
            last_part: tokio::time::Instant::now(),
            received: 0,
            timer: None,
        }
    }

    /// The earlier of the two limits, and which one it is (`true`: the rate).
    fn deadline(&self, started: tokio::time::Instant) -> (tokio::time::Instant, bool) {
        let by_part = self.last_part + self.idle;
        let allowed = self.idle + Duration::from_secs_f64(self.received as f64 / MIN_BODY_RATE as f64);
        let by_rate = started + allowed;
        if by_rate < by_part {
            (by_rate, true)
        } else {
            (by_part, false)
        }
    }
}

impl HttpBody for SlowBodyTimeout {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let started = *this.started.get_or_insert_with(|| {
            let now = tokio::time::Instant::now();
            this.last_part = now;
            now
        });
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(Ok(part)) = &frame
                    && let Some(data) = part.data_ref()
                {
                    this.received += data.len() as u64;
                }
                this.last_part = tokio::time::Instant::now();
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let (deadline, by_rate) = this.deadline(started);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let message = if by_rate {
                            format!(
                                "the request body arrived slower than {MIN_BODY_RATE} bytes/s ({} bytes in {} ms; --client-timeout-ms {} plus a second per {MIN_BODY_RATE} bytes)",
                                this.received,
                                started.elapsed().as_millis(),
                                this.idle.as_millis()
                            )
                        } else {
                            format!(
                                "no part of the request body arrived for {} ms (--client-timeout-ms)",
                                this.idle.as_millis()
                            )
                        };
                        Poll::Ready(Some(Err(axum::Error::new(message))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
