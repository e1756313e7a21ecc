//! Sending a plugin's request: the one `wasi:http` hook every outgoing
//! request passes. In order: the journal (an answer recorded for this
//! request is given back, nothing is sent), the grant (origin), the limits
//! (rate, concurrency, body), the address check on what the name resolves to
//! (the address checked is the address connected to: no DNS-rebinding gap),
//! then the request itself, sent with an `Idempotency-Key`, its response read
//! whole (bounded) and journaled before the guest sees it.
//!
//! `wasi:http` never follows redirects: a 3xx goes to the guest, and a
//! request to its `Location` passes this same hook, so a redirect reaches
//! only what the grant allows.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::event::Event;
use crate::http::address::special_address;
use crate::http::grant::{HostRule, HttpGrant, Scheme, parse_ip_host, split_host_port};
use crate::http::journal::{Recorded, RequestJournal, RequestKey, fingerprint};
use crate::http::stats::HttpStats;

/// What every instance of one loaded plugin shares: its grant, the bus's
/// journal, its counters and the limits' live state.
pub(crate) struct Outbound {
    pub plugin: Arc<str>,
    pub grant: Arc<HttpGrant>,
    pub stats: Arc<HttpStats>,
    setup: HttpSetup,
    announce: Announce,
    in_flight: Arc<Semaphore>,
    bucket: Mutex<Bucket>,
}

/// What a bus tells its plugins' request hooks.
#[derive(Clone)]
pub(crate) struct HttpSetup {
    /// Where outcomes are recorded and looked up.
    pub journal: RequestJournal,
    /// The bus is a `plugbus replay`: every event is handled again.
    pub replay_run: bool,
    /// In a replay, send a request the journal has no answer for
    /// (`plugbus replay --live-requests`) instead of refusing it.
    pub live_in_replay: bool,
}

impl Default for HttpSetup {
    /// A live bus without a log: the memory journal.
    fn default() -> Self {
        HttpSetup {
            journal: RequestJournal::memory(),
            replay_run: false,
            live_in_replay: false,
        }
    }
}

impl Outbound {
    pub fn new(plugin: Arc<str>, grant: Arc<HttpGrant>, setup: &HttpSetup, announce: Announce) -> Outbound {
        Outbound {
            in_flight: Arc::new(Semaphore::new(grant.max_concurrent as usize)),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(grant.per_second),
                at: Instant::now(),
            }),
            plugin,
            grant,
            stats: Arc::new(HttpStats::default()),
            setup: setup.clone(),
            announce,
        }
    }

    /// Counts, logs and (unless `quiet`: an event handled again) announces
    /// a refusal as `plugbus.plugin.request_refused`, with the rule.
    fn refused(&self, event: &str, url: &str, rule: &str, quiet: bool) {
        self.stats.refused.fetch_add(1, Relaxed);
        tracing::warn!(plugin = &*self.plugin, event, url, rule, "request refused");
        if !quiet {
            (self.announce)(Event::new(
                "plugbus.plugin.request_refused",
                json!({ "name": &*self.plugin, "event": event, "url": url, "rule": rule }),
            ));
        }
    }

    /// Takes one request from the per-second budget (a token bucket holding
    /// one second's worth).
    fn take_token(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let rate = f64::from(self.grant.per_second);
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Publishes a `plugbus.*` event on the bus (the plugin's port, wrapped by
/// its caller so that this module does not reach into `plugin`).
pub(crate) type Announce = Arc<dyn Fn(Event) + Send + Sync>;

/// The per-instance hook state: which event the instance is on, how many
/// requests it made for it, and whether it is being replayed.
pub(crate) struct PluginHttp {
    outbound: Arc<Outbound>,
    /// The event being handled; `None` outside events (no request allowed).
    event: Option<Event>,
    next_index: u32,
    /// True while the event is handled again (state rebuilt, a batch re-run,
    /// a replay): requests are answered from the journal only.
    replaying: bool,
    /// True when the plugin's own voice is not live (state rebuilt, a
    /// batch re-run): never sent, even with `--live-requests`.
    silent: bool,
    querying: bool,
    /// Nanoseconds spent waiting on requests since the event began: added to
    /// its wall-clock deadline, up to the grant's I/O budget.
    pub io_waited: Arc<AtomicU64>,
}

impl PluginHttp {
    pub fn new(outbound: Arc<Outbound>) -> PluginHttp {
        PluginHttp {
            outbound,
            event: None,
            next_index: 0,
            replaying: false,
            silent: false,
            querying: false,
            io_waited: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A new event (or none) begins; `silent`: it is handled again to
    /// rebuild state, its requests answered from the journal only.
    pub fn begin(&mut self, event: Option<Event>, silent: bool) {
        self.event = event;
        self.next_index = 0;
        self.silent = silent;
        self.replaying = silent || self.outbound.setup.replay_run;
        self.querying = false;
        self.io_waited.store(0, Relaxed);
    }

    /// A query begins: requests are refused (a query may not act).
    pub fn begin_query(&mut self) {
        self.begin(None, false);
        self.querying = true;
    }

    /// The I/O budget one event has.
    pub fn io_budget(&self) -> Duration {
        self.outbound.grant.io_budget
    }

    /// Refuses a request (see [`Outbound::refused`]).
    fn refuse(&self, url: &str, rule: String, error: Error) -> Error {
        let event = self.event.as_ref().map_or("", Event::name);
        self.outbound.refused(event, url, &rule, self.replaying);
        error
    }
}

type Sent = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
)>;

impl WasiHttpHooks for PluginHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let url = shown_url(request.uri());
        let request_id = fingerprint(request.method().as_str(), &request.uri().to_string());
        let decided = self.decide(&url);
        let outbound = self.outbound.clone();
        let waited = self.io_waited.clone();
        let exchange = async move {
            let (key, checks) = decided?;
            // The journal first: an answer recorded for this key is given
            // back and nothing is sent (or counted against the limits).
            match outbound.setup.journal.lookup(&key).await {
                Ok(Some((_, Some(answered)))) if answered != request_id => {
                    // Another request has this key's answer (a version that
                    // asks in another order, two events sharing an id):
                    // never given another request's response, never sent
                    // under a key whose answer is kept.
                    return Err(checks.refuse(
                        &url,
                        format!(
                            "the request journal holds the answer to another request (method or URL) as request {} of this event",
                            key.index
                        ),
                        Error::HttpRequestDenied,
                    ));
                }
                // A refusal by a limit sent nothing: an event handled live
                // again (a redrive, a redelivery) asks the limits afresh, and
                // its outcome replaces the refusal.
                Ok(Some((recorded, _))) if !checks.replaying && is_limit_refusal(&recorded) => {}
                Ok(Some((recorded, _))) => {
                    outbound.stats.replayed.fetch_add(1, Relaxed);
                    tracing::debug!(
                        plugin = &*outbound.plugin,
                        url,
                        index = key.index,
                        "request answered from the journal"
                    );
                    return answer(&recorded);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(plugin = &*outbound.plugin, url, error = %e, "request journal unreadable; request not sent");
                    return Err(Error::InternalError(Some(format!("request journal: {e}"))));
                }
            }
            let seq = checks.seq;
            let target = match checks.check(&request, &url) {
                Ok(target) => target,
                Err(Refused { error, journal: None }) => return Err(error),
                Err(Refused {
                    error,
                    journal: Some(code),
                }) => {
                    // A limit's refusal depends on the moment, so rebuilding
                    // the plugin's state must be told it, not decide afresh
                    // (that would be `HTTP-request-denied`). Written without
                    // a sync of its own, and only for an event's first
                    // requests: a plugin hammering its limit costs a bounded
                    // number of writes per event. Not on NATS, whose journal
                    // every host shares: there a put is a round trip, and a
                    // refusal on one host must not overwrite the response
                    // another host got for the same event.
                    if key.index < JOURNALED_REFUSALS && !outbound.setup.journal.is_shared() {
                        let recorded = Recorded::Failed(code.to_owned());
                        if let Err(e) = outbound
                            .setup
                            .journal
                            .record_unsynced(key, seq, Some(request_id), recorded)
                            .await
                        {
                            tracing::warn!(plugin = &*outbound.plugin, url, error = %e, "refusal not journaled: handling the event again answers HTTP-request-denied");
                        }
                    }
                    return Err(error);
                }
            };
            let Target {
                permit,
                scheme,
                host,
                port,
                literal,
                event,
                seq,
            } = target;
            let started = Instant::now();
            let outcome = send(
                &outbound,
                request,
                options,
                (&key, &event),
                (scheme, host, port, literal),
            )
            .await;
            drop(permit);
            outbound.stats.observe(started.elapsed());
            let recorded = match outcome {
                Ok(response) => response,
                Err(Unsent(error)) => return Err(error),
            };
            let for_guest = answer(&recorded);
            match outbound
                .setup
                .journal
                .record(key, seq, Some(request_id), recorded)
                .await
            {
                Ok(()) => for_guest,
                Err(e) => {
                    tracing::error!(plugin = &*outbound.plugin, url, error = %e, "request sent but not journaled: a replay of this event will not find it");
                    Err(Error::InternalError(Some(format!("request journal: {e}"))))
                }
            }
        };
        Box::new(async move {
            // All of it is time waited on I/O, not the guest's own: the
            // journal's lookup (a file, or a NATS bucket's parts) and its
            // record (synced with the log) as much as the exchange.
            let started = Instant::now();
            let result = exchange.await;
            waited.fetch_add(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX), Relaxed);
            result
        })
    }
}

/// A request the checks let through: where it goes, and its concurrency permit.
struct Target {
    permit: tokio::sync::OwnedSemaphorePermit,
    scheme: Scheme,
    host: String,
    port: u16,
    /// The address of the literal-IP origin that admitted the request.
    literal: Option<IpAddr>,
    /// The event's name, for refusals found while sending.
    event: String,
    /// The event's sequence number, journaled with the outcome.
    seq: Option<u64>,
}

/// A request that failed before it could reach the server: not journaled.
struct Unsent(Error);

/// A request the checks refused: the guest's error, and the code to journal
/// when the refusal depends on the moment (a limit) rather than on the
/// request and the grant, which decide the same way when the event is
/// handled again.
struct Refused {
    error: Error,
    journal: Option<&'static str>,
}

impl From<Error> for Refused {
    fn from(error: Error) -> Refused {
        Refused { error, journal: None }
    }
}

/// An event's requests whose refusal by a limit is journaled: the first 32.
/// Enough for any plugin that does not loop on a refusal (webhook-alert and
/// otlp-export make one request per event or flush); past it, a refusal is
/// answered `HTTP-request-denied` when the event is handled again.
const JOURNALED_REFUSALS: u32 = 32;

/// What the checks of a request the journal does not answer need, taken
/// from the instance when the guest makes the request (the checks run
/// after the journal's answer, which may be awaited).
struct Checks {
    outbound: Arc<Outbound>,
    event: String,
    seq: Option<u64>,
    replaying: bool,
    silent: bool,
}

impl PluginHttp {
    /// The request's key and what its checks need. `Err`: refused whatever
    /// the journal holds (no event, a query).
    fn decide(&mut self, url: &str) -> Result<(RequestKey, Checks), Error> {
        if self.querying {
            return Err(self.refuse(url, "a query may not make requests".into(), Error::HttpRequestDenied));
        }
        let Some(event) = &self.event else {
            return Err(self.refuse(
                url,
                "requests are only allowed while handling an event".into(),
                Error::HttpRequestDenied,
            ));
        };
        let key = RequestKey {
            plugin: self.outbound.plugin.to_string(),
            event: event.id().to_owned(),
            index: self.next_index,
        };
        let checks = Checks {
            outbound: self.outbound.clone(),
            event: event.name().to_owned(),
            seq: event.seq(),
            replaying: self.replaying,
            silent: self.silent,
        };
        self.next_index += 1;
        Ok((key, checks))
    }
}

impl Checks {
    /// Refuses a request (see [`Outbound::refused`]).
    fn refuse(&self, url: &str, rule: String, error: Error) -> Error {
        self.outbound.refused(&self.event, url, &rule, self.replaying);
        error
    }

    /// Grant, replay, rate and concurrency checks for a request the journal
    /// does not answer.
    fn check(self, request: &http::Request<WasiBody>, url: &str) -> Result<Target, Refused> {
        let grant = &self.outbound.grant;
        if grant.is_empty() {
            return Err(Refused::from(self.refuse(
                url,
                "the plugin has no [http] grant in its manifest".into(),
                Error::HttpRequestDenied,
            )));
        }
        let uri = request.uri();
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            other => {
                return Err(Refused::from(self.refuse(
                    url,
                    format!("scheme {other:?} is not http or https"),
                    Error::HttpRequestDenied,
                )));
            }
        };
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
        if authority.contains('@') {
            // Never echoed: `user:password@` is a credential.
            return Err(Refused::from(self.refuse(
                url,
                "the URL holds user info (`user:password@`); send credentials in a header".into(),
                Error::HttpRequestUriInvalid,
            )));
        }
        let Some((host, port)) = split_host_port(authority) else {
            return Err(Refused::from(self.refuse(
                url,
                format!("bad authority `{authority}`"),
                Error::HttpRequestUriInvalid,
            )));
        };
        let host = host.to_ascii_lowercase();
        let port = port.unwrap_or(scheme.default_port());
        let Some(origin) = grant.origin_for(scheme, &host, port) else {
            let granted: Vec<String> = grant.allow.iter().map(ToString::to_string).collect();
            return Err(Refused::from(self.refuse(
                url,
                format!("origin not in http.allow ({})", granted.join(", ")),
                Error::HttpRequestDenied,
            )));
        };
        let literal = match origin.host {
            HostRule::Ip(ip) => Some(ip),
            _ => None,
        };
        if self.replaying && (self.silent || !self.outbound.setup.live_in_replay) {
            return Err(Refused::from(self.refuse(
                url,
                "replaying: the journal has no answer for this request, and a replay never sends one".into(),
                Error::HttpRequestDenied,
            )));
        }
        if !self.outbound.take_token() {
            return Err(Refused {
                error: self.refuse(
                    url,
                    format!("http.per_second ({}) reached", grant.per_second),
                    Error::ConnectionLimitReached,
                ),
                journal: Some(LIMIT_REACHED),
            });
        }
        let Ok(permit) = self.outbound.in_flight.clone().try_acquire_owned() else {
            return Err(Refused {
                error: self.refuse(
                    url,
                    format!(
                        "http.max_concurrent ({}) requests already in flight",
                        grant.max_concurrent
                    ),
                    Error::ConnectionLimitReached,
                ),
                journal: Some(LIMIT_REACHED),
            });
        };
        Ok(Target {
            permit,
            scheme,
            host,
            port,
            literal,
            seq: self.seq,
            event: self.event,
        })
    }
}

/// Sends the request; the outcome to journal, or why nothing was sent.
async fn send(
    out: &Outbound,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    (key, event): (&RequestKey, &str),
    (scheme, host, port, literal): (Scheme, String, u16, Option<IpAddr>),
) -> Result<Recorded, Unsent> {
    let grant = &out.grant;
    let url = shown_url(request.uri());
    // Only live requests get this far: a refusal here is announced, and
    // journaled like any outcome (`code`, see `error_of`), so that handling
    // the event again gives the guest the same error the live run gave.
    let refuse = |rule: String, code: &str| {
        out.refused(event, &url, &rule, false);
        Recorded::Failed(code.to_owned())
    };
    // The body first: a request over the limit is refused before any connection.
    let (mut parts, body) = request.into_parts();
    let body = match Limited::new(body, grant.request_body_bytes).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(refuse(
                format!(
                    "request body over http.request_body_kib ({} KiB)",
                    grant.request_body_bytes >> 10
                ),
                "http-request-body-size",
            ));
        }
    };
    // `timeout_ms` bounds the whole request, from the name lookup to the last
    // body byte; `connect_timeout_ms` the lookup and the connect within it.
    let started = tokio::time::Instant::now();
    let deadline = started + grant.timeout;
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .map_or(grant.connect_timeout, |t| t.min(grant.connect_timeout));
    let connect_deadline = deadline.min(started + connect_timeout);
    let addr = match tokio::time::timeout_at(connect_deadline, resolve(&host, port)).await {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => return Ok(refuse(format!("`{host}` does not resolve: {e}"), "dns-error")),
        Err(_) => {
            return Ok(refuse(
                format!("`{host}` did not resolve within http.connect_timeout_ms"),
                "dns-timeout",
            ));
        }
    };
    let addr = match pick_address(grant, literal, &host, &addr) {
        Ok(addr) => addr,
        Err(rule) => return Ok(refuse(rule, "destination-ip-prohibited")),
    };
    let stream = match tokio::time::timeout_at(connect_deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            out.stats.failed.fetch_add(1, Relaxed);
            tracing::warn!(plugin = &*out.plugin, url, %addr, error = %e, "request failed: cannot connect");
            return Ok(Recorded::Failed(connect_code(&e).into()));
        }
        Err(_) => {
            out.stats.failed.fetch_add(1, Relaxed);
            return Ok(Recorded::Failed("connection-timeout".into()));
        }
    };
    parts.headers.insert(
        "idempotency-key",
        http::HeaderValue::from_str(&key.idempotency_key()).map_err(|_| Unsent(Error::InternalError(None)))?,
    );
    parts.uri = http::Uri::builder()
        .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Unsent(Error::HttpRequestUriInvalid))?;
    let sent_bytes = body.len() as u64;
    let request = http::Request::from_parts(parts, Full::new(body));
    let limit = grant.response_body_bytes;
    let exchange = async {
        match scheme {
            Scheme::Http => exchange(TokioIo::new(stream), request, limit).await,
            Scheme::Https => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| "tls-protocol-error")?;
                let tls = tokio_rustls::TlsConnector::from(tls_config().map_err(|_| "tls-certificate-error")?)
                    .connect(name, stream)
                    .await
                    .map_err(|e| {
                        if e.to_string().contains("certificate") {
                            "tls-certificate-error"
                        } else {
                            "tls-protocol-error"
                        }
                    })?;
                exchange(TokioIo::new(tls), request, limit).await
            }
        }
    };
    let recorded = match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok((parts, body))) => {
            out.stats.sent.fetch_add(1, Relaxed);
            out.stats.bytes_out.fetch_add(sent_bytes, Relaxed);
            out.stats.bytes_in.fetch_add(body.len() as u64, Relaxed);
            Recorded::Response {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect(),
                body: body.to_vec(),
            }
        }
        Ok(Err(code)) => {
            out.stats.failed.fetch_add(1, Relaxed);
            tracing::warn!(plugin = &*out.plugin, url, error = code, "request failed");
            Recorded::Failed(code.into())
        }
        Err(_) => {
            out.stats.failed.fetch_add(1, Relaxed);
            tracing::warn!(
                plugin = &*out.plugin,
                url,
                timeout_ms = grant.timeout.as_millis() as u64,
                "request failed: http.timeout_ms passed"
            );
            Recorded::Failed("http-response-timeout".into())
        }
    };
    Ok(recorded)
}

/// A request's URL as logs, events and errors show it: scheme, host and
/// port only. The path, query and any `user:password@` stay out, since a
/// webhook's URL is often its secret (Slack's, Discord's, a token in the
/// query): `https://user:pw@hooks.example.com/services/T0/B0/SECRET?x=1`
/// is shown as `https://hooks.example.com/…`.
pub(crate) fn shown_url(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("?");
    let host = uri.host().unwrap_or("");
    let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let rest = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("" | "/") => "",
        Some(_) => "/…",
    };
    format!("{scheme}://{host}{port}{rest}")
}

/// One HTTP/1.1 exchange on a connected stream: the response head and its
/// whole body (at most `limit` bytes). The connection is driven in this same
/// future (no task of its own: one less hop between threads per request).
async fn exchange<S>(
    io: TokioIo<S>,
    request: http::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(http::response::Parts, Bytes), &'static str>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| "connection-terminated")?;
    let work = async {
        let response = sender.send_request(request).await.map_err(|e| {
            if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
                "connection-terminated"
            } else {
                "http-protocol-error"
            }
        })?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    "http-response-body-size"
                } else {
                    "http-response-incomplete"
                }
            })?
            .to_bytes();
        Ok((parts, body))
    };
    tokio::pin!(conn, work);
    let mut driving = true;
    loop {
        tokio::select! {
            done = &mut work => return done,
            ended = &mut conn, if driving => {
                driving = false;
                // A connection that ended early fails the exchange, which
                // `work` then reports; one that ended cleanly leaves it to finish.
                let _ = ended;
            }
        }
    }
}

/// The addresses `host` resolves to (an IP literal is itself).
async fn resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Some(ip) = parse_ip_host(host) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"));
    }
    Ok(addrs)
}

/// The first resolved address the grant lets the request reach; `Err` with
/// the rule when none. `literal`: the address of the literal-IP origin that
/// admitted the request (`http://127.0.0.1:4318`), which the request may
/// reach; a name reaches a special address only through `allow_addresses`
/// (a literal origin grants its address to no name and no other port).
pub(crate) fn pick_address(
    grant: &HttpGrant,
    literal: Option<IpAddr>,
    host: &str,
    addrs: &[SocketAddr],
) -> Result<SocketAddr, String> {
    let mut refused = Vec::new();
    for addr in addrs {
        let ip: IpAddr = addr.ip();
        let own = literal.is_some_and(|l| l.to_canonical() == ip.to_canonical());
        match special_address(ip) {
            Some(kind) if !own && !grant.address_granted(ip) => refused.push(format!("{ip} ({kind})")),
            _ => return Ok(*addr),
        }
    }
    Err(format!(
        "`{host}` resolves to {}, which http.allow_addresses does not list (an address reaching into the host's network must be granted by address)",
        refused.join(", ")
    ))
}

fn connect_code(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection-refused",
        std::io::ErrorKind::TimedOut => "connection-timeout",
        _ => "destination-unavailable",
    }
}

/// The journaled code of a refusal by the rate or concurrency limit.
const LIMIT_REACHED: &str = "connection-limit-reached";

/// Whether `recorded` is a refusal by a limit (nothing was sent).
fn is_limit_refusal(recorded: &Recorded) -> bool {
    matches!(recorded, Recorded::Failed(code) if code == LIMIT_REACHED)
}

/// The `wasi:http` error of a journaled failure code.
fn error_of(code: &str) -> Error {
    match code {
        "connection-refused" => Error::ConnectionRefused,
        "connection-timeout" => Error::ConnectionTimeout,
        "connection-terminated" => Error::ConnectionTerminated,
        "destination-unavailable" => Error::DestinationUnavailable,
        "tls-protocol-error" => Error::TlsProtocolError,
        "tls-certificate-error" => Error::TlsCertificateError,
        "http-response-body-size" => Error::HttpResponseBodySize(None),
        "http-response-incomplete" => Error::HttpResponseIncomplete,
        "http-response-timeout" => Error::HttpResponseTimeout,
        "http-protocol-error" => Error::HttpProtocolError,
        "http-request-body-size" => Error::HttpRequestBodySize(None),
        "dns-error" => Error::DnsError {
            rcode: None,
            info_code: None,
        },
        "dns-timeout" => Error::DnsTimeout,
        "destination-ip-prohibited" => Error::DestinationIpProhibited,
        LIMIT_REACHED => Error::ConnectionLimitReached,
        other => Error::InternalError(Some(other.to_owned())),
    }
}

/// What the guest gets for a recorded outcome.
fn answer(recorded: &Recorded) -> Sent {
    match recorded {
        Recorded::Failed(code) => Err(error_of(code)),
        Recorded::Response { status, headers, body } => {
            let mut builder = http::Response::builder().status(*status);
            for (k, v) in headers {
                builder = builder.header(k, v);
            }
            let body = Full::new(Bytes::from(body.clone()))
                .map_err(|never| match never {})
                .boxed_unsync();
            let response = builder
                .body(body)
                .map_err(|e| Error::InternalError(Some(format!("journaled response: {e}"))))?;
            Ok((response, Box::new(async { Ok(()) })))
        }
    }
}

/// The TLS client settings: the system's trust store, ring, TLS 1.2 and 1.3.
/// Built once per process.
fn tls_config() -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<tokio_rustls::rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            use tokio_rustls::rustls;
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no trusted root certificates found on this system".into());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::grant::RawHttp;

    #[test]
    fn the_address_connected_to_is_the_one_checked() {
        let grant = HttpGrant::validate(RawHttp {
            allow: vec!["http://hooks.example.com".into()],
            ..Default::default()
        })
        .unwrap();
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let public: SocketAddr = "93.184.215.14:80".parse().unwrap();
        let e = pick_address(&grant, None, "hooks.example.com", &[lo]).unwrap_err();
        assert!(
            e.contains("127.0.0.1 (loopback)") && e.contains("allow_addresses"),
            "{e}"
        );
        assert_eq!(
            pick_address(&grant, None, "hooks.example.com", &[lo, public]),
            Ok(public)
        );
        let granted = HttpGrant::validate(RawHttp {
            allow: vec!["http://hooks.example.com".into()],
            allow_addresses: vec!["127.0.0.0/8".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(pick_address(&granted, None, "hooks.example.com", &[lo]), Ok(lo));
        // A literal origin reaches its own address, in either form, and
        // grants it to no name.
        let literal = HttpGrant::validate(RawHttp {
            allow: vec!["http://127.0.0.1:4318".into(), "https://*.example.com".into()],
            ..Default::default()
        })
        .unwrap();
        let own = Some("127.0.0.1".parse().unwrap());
        let lo_4318: SocketAddr = "127.0.0.1:4318".parse().unwrap();
        assert_eq!(pick_address(&literal, own, "127.0.0.1", &[lo_4318]), Ok(lo_4318));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:4318".parse().unwrap();
        let mapped_own = Some("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(
            pick_address(&literal, mapped_own, "::ffff:127.0.0.1", &[mapped]),
            Ok(mapped)
        );
        let e = pick_address(&literal, None, "rebound.example.com", &[lo]).unwrap_err();
        assert!(e.contains("127.0.0.1 (loopback)"), "{e}");
    }

    #[test]
    fn a_shown_url_keeps_only_the_origin() {
        for (url, shown) in [
            (
                "https://user:pw@hooks.example.com/services/T0/B0/SECRET?x=1",
                "https://hooks.example.com/…",
            ),
            ("http://127.0.0.1:4318/v1/traces", "http://127.0.0.1:4318/…"),
            ("http://[::1]:8080/?token=SECRET", "http://[::1]:8080/…"),
            ("https://hooks.example.com", "https://hooks.example.com"),
            ("https://hooks.example.com/", "https://hooks.example.com"),
        ] {
            let uri: http::Uri = url.parse().unwrap();
            assert_eq!(shown_url(&uri), shown, "{url}");
        }
    }

    #[test]
    fn journaled_failures_come_back_as_the_same_error() {
        for code in [
            "connection-refused",
            "connection-timeout",
            "http-response-timeout",
            "http-response-body-size",
            "http-request-body-size",
            "dns-error",
            "dns-timeout",
            "destination-ip-prohibited",
        ] {
            let Err(e) = answer(&Recorded::Failed(code.into())) else {
                panic!("{code} answered")
            };
            assert!(!matches!(e, Error::InternalError(_)), "{code}");
        }
    }
}
