//! OpenTelemetry in: an OTLP/HTTP trace receiver whose GenAI spans become
//! bus events (`POST /v1/traces` in `plugbus serve`; [`Receiver::export`]
//! for any other front end, the Python package's span exporter included).
//!
//! - [`genai`]: the mapping from spans to events (docs/opentelemetry.md);
//! - [`attributes`]: attribute values as JSON, typed lookups;
//! - `payload`: a mapped event's payload written straight to JSON text.
//!
//! A request is decoded whole (protobuf or OTLP JSON, gzip or not, within
//! [`MAX_BODY`] and [`MAX_DECODED`], its spans and elements counted on the
//! wire first: [`MAX_SPANS`], [`MAX_ELEMENTS`]), mapped (within
//! [`MAX_MAPPED`] bytes of events), then published with
//! [`Bus::publish_once_all`]: the events' ids derive from the spans, so an
//! exporter's retry of a request that was stored is not stored twice.
//! The answer is the OTLP `ExportTraceServiceResponse`, with a partial
//! success naming the spans refused.

pub mod attributes;
pub mod budget;
pub mod genai;
mod json;
mod payload;

use std::io::Read as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

pub use genai::{MapOptions, Mapping, Rejected, SEMCONV_VERSION, map_request};

use crate::bus::Bus;
use crate::log::LogError;

/// Largest request body as sent (compressed or not): an exporter's batch
/// is 512 spans, a few hundred KiB even with message content; 16 MiB leaves
/// room for large prompts while bounding what one client makes us buffer.
pub const MAX_BODY: usize = 16 << 20;

/// Largest body once gunzipped: text compresses ~10×, so a full compressed
/// body may legitimately inflate past `MAX_BODY`; 64 MiB stops a gzip bomb.
pub const MAX_DECODED: usize = 64 << 20;

/// Most spans taken in one request: 16 exporter batches of 512. More is
/// refused (413) rather than held in memory as events at once; and a
/// request's events (at most two per span) must fit in half the bus's
/// window of recent ids (32,768), or an exporter's retry of it would push its own first ids out of the window
/// and be stored a second time.
pub const MAX_SPANS: usize = crate::bus::recent_ids::RECENT_IDS / 4;

/// Most elements (messages, strings, objects, arrays: see [`budget`]) in
/// one request, counted before it is decoded: a decoded element takes up
/// to ~100 bytes however few it took on the wire, so this bounds a request
/// to ~50 MiB once decoded. An exporter's batch of 512 spans with 40
/// attributes each is ~80,000.
pub const MAX_ELEMENTS: usize = 512 << 10;

/// Most bytes of events a request may map to (payloads, ids, sources and
/// correlation ids together): a resource's `service.name` or a trace's
/// conversation id is copied into each of its events, so a small body
/// could otherwise map to gigabytes.
pub const MAX_MAPPED: usize = MAX_DECODED;

/// The two OTLP/HTTP encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (OTLP JSON: hex ids, integer enums, 64-bit
    /// integers as strings).
    Json,
}

impl Encoding {
    /// The encoding a `Content-Type` names. Parameters are ignored, except
    /// a JSON body's `charset`: JSON is UTF-8 (RFC 8259, 8.1), so another
    /// one is refused rather than read as UTF-8.
    ///
    /// # Errors
    /// [`OtlpError::UnsupportedMediaType`] for anything else.
    ///
    /// ```
    /// use plugbus::otlp::Encoding;
    /// assert_eq!(Encoding::of(Some("application/json; charset=utf-8")).unwrap(), Encoding::Json);
    /// assert!(Encoding::of(Some("application/json; charset=iso-8859-1")).is_err());
    /// assert!(Encoding::of(Some("text/plain")).is_err());
    /// ```
    pub fn of(content_type: Option<&str>) -> Result<Encoding, OtlpError> {
        let refused = || OtlpError::UnsupportedMediaType(content_type.unwrap_or("(none)").to_owned());
        let mut parts = content_type.unwrap_or_default().split(';');
        let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => {
                let charset = parts.filter_map(|p| p.split_once('=')).find_map(|(k, v)| {
                    k.trim()
                        .eq_ignore_ascii_case("charset")
                        .then(|| v.trim().trim_matches('"').to_ascii_lowercase())
                });
                match charset.as_deref() {
                    None | Some("utf-8" | "utf8") => Ok(Encoding::Json),
                    Some(_) => Err(refused()),
                }
            }
            _ => Err(refused()),
        }
    }

    /// The `Content-Type` of an answer in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// Why a request was not taken. [`OtlpError::status`] gives the HTTP
/// status the OTLP/HTTP spec asks for (exporters retry 429, 502, 503, 504
/// and give up on the others).
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// Neither `application/x-protobuf` nor `application/json` (415).
    #[error("unsupported content type {0}: OTLP/HTTP takes application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    /// A `Content-Encoding` other than gzip or identity (415).
    #[error("unsupported content encoding {0}: gzip, deflate or none")]
    UnsupportedEncoding(String),
    /// Over [`MAX_BODY`] as sent, [`MAX_DECODED`] gunzipped, or
    /// [`MAX_SPANS`] spans (413).
    #[error("request too large: {0}")]
    TooLarge(String),
    /// Not gzip, not protobuf or not OTLP JSON (400).
    #[error("malformed OTLP request: {0}")]
    Malformed(String),
    /// A schema refused one of the events (400: a retry would be refused too).
    #[error("an event was refused: {0}")]
    Refused(String),
    /// The bus could not store the events: the log failed or the host is
    /// shutting down (503: retry later).
    #[error("cannot store the events now: {0}")]
    Unavailable(String),
}

impl OtlpError {
    /// The HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            OtlpError::UnsupportedMediaType(_) | OtlpError::UnsupportedEncoding(_) => 415,
            OtlpError::TooLarge(_) => 413,
            OtlpError::Malformed(_) | OtlpError::Refused(_) => 400,
            OtlpError::Unavailable(_) => 503,
        }
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error answer (the OTLP
/// protos do not carry it; two fields are all an exporter reads).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// The body of an error answer in `encoding`: a `google.rpc.Status` as the
/// OTLP/HTTP spec asks (protobuf), or `{"code", "message"}` (JSON).
pub fn error_body(error: &OtlpError, encoding: Encoding) -> Vec<u8> {
    // gRPC codes: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE.
    let code = match error.status() {
        413 => 8,
        503 => 14,
        _ => 3,
    };
    let message = error.to_string();
    match encoding {
        Encoding::Protobuf => RpcStatus { code, message }.encode_to_vec(),
        Encoding::Json => serde_json::json!({ "code": code, "message": message })
            .to_string()
            .into_bytes(),
    }
}

/// Decodes a request body: gunzips it when `content_encoding` says gzip
/// (bounded by [`MAX_DECODED`]), then reads protobuf or OTLP JSON.
///
/// # Errors
/// [`OtlpError`] naming what is wrong with the body.
pub fn decode(
    body: &[u8],
    encoding: Encoding,
    content_encoding: Option<&str>,
) -> Result<ExportTraceServiceRequest, OtlpError> {
    if body.len() > MAX_BODY {
        return Err(OtlpError::TooLarge(format!(
            "the body is {} bytes, over {MAX_BODY}",
            body.len()
        )));
    }
    let inflated;
    let body = match content_encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "identity") => body,
        // Every member of a gzip stream (a body may be several, concatenated).
        Some("gzip" | "x-gzip") => {
            inflated = inflate(flate2::read::MultiGzDecoder::new(body), "gzip")?;
            &inflated[..]
        }
        // HTTP's `deflate` is zlib (RFC 9110), what the OTLP exporters that
        // offer it send; a raw deflate stream (no zlib header) is taken too.
        Some("deflate") if zlib_header(body) => {
            inflated = inflate(flate2::read::ZlibDecoder::new(body), "deflate")?;
            &inflated[..]
        }
        Some("deflate") => {
            inflated = inflate(flate2::read::DeflateDecoder::new(body), "deflate")?;
            &inflated[..]
        }
        Some(other) => return Err(OtlpError::UnsupportedEncoding(other.to_owned())),
    };
    let counts = match encoding {
        Encoding::Protobuf => budget::protobuf(body, MAX_ELEMENTS)?,
        Encoding::Json => budget::json(body),
    };
    if counts.spans > MAX_SPANS {
        return Err(OtlpError::TooLarge(format!(
            "{} spans in one request, over {MAX_SPANS} (lower the exporter's batch size)",
            counts.spans
        )));
    }
    if counts.elements > MAX_ELEMENTS {
        return Err(OtlpError::TooLarge(format!(
            "{} elements (spans, attributes, values) in one request, over {MAX_ELEMENTS} (lower the exporter's batch size)",
            counts.elements
        )));
    }
    let request = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body)
            .map_err(|e| OtlpError::Malformed(format!("not an ExportTraceServiceRequest: {e}")))?,
        Encoding::Json => json::from_slice(body).map_err(|e| OtlpError::Malformed(format!("not OTLP JSON: {e}")))?,
    };
    let spans: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    if spans > MAX_SPANS {
        return Err(OtlpError::TooLarge(format!(
            "{spans} spans in one request, over {MAX_SPANS}"
        )));
    }
    Ok(request)
}

/// The span an event was mapped from, named as its end event's id (a
/// span's start event is `<that id>-start`).
fn span_of(event_id: &str) -> String {
    event_id.strip_suffix("-start").unwrap_or(event_id).to_owned()
}

/// Whether `body` starts with a zlib header (RFC 1950: method 8, a window
/// of at most 32 KiB, the two bytes a multiple of 31).
fn zlib_header(body: &[u8]) -> bool {
    match body {
        [cmf, flg, ..] => cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// A compressed body, inflated up to [`MAX_DECODED`] bytes.
fn inflate(mut reader: impl std::io::Read, what: &str) -> Result<Vec<u8>, OtlpError> {
    let mut out = Vec::new();
    (&mut reader)
        .take(MAX_DECODED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| OtlpError::Malformed(format!("the {what} body cannot be read: {e}")))?;
    if out.len() > MAX_DECODED {
        return Err(OtlpError::TooLarge(format!(
            "the body inflates past {MAX_DECODED} bytes"
        )));
    }
    Ok(out)
}

/// What one export did.
#[derive(Debug, Clone, Default)]
pub struct Export {
    /// Spans in the request.
    pub spans: u64,
    /// Spans that became events.
    pub mapped: u64,
    /// Spans that were not GenAI spans and were dropped.
    pub dropped: u64,
    /// Spans refused, each with its reason.
    pub rejected: Vec<Rejected>,
    /// Events published.
    pub published: u64,
    /// Events skipped as repeats of events taken before (a retry).
    pub duplicates: u64,
    /// Attributes with a wrong type or out of range, left out.
    pub invalid_attributes: u64,
}

impl Export {
    /// The OTLP answer: empty on full success, else a partial success with
    /// the number of spans refused and the first reasons.
    pub fn response(&self) -> ExportTraceServiceResponse {
        if self.rejected.is_empty() {
            return ExportTraceServiceResponse { partial_success: None };
        }
        let mut message = self
            .rejected
            .iter()
            .take(3)
            .map(|r| format!("span `{}`: {}", r.span, r.reason))
            .collect::<Vec<_>>()
            .join("; ");
        if self.rejected.len() > 3 {
            message.push_str(&format!("; and {} more", self.rejected.len() - 3));
        }
        ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: self.rejected.len() as i64,
                error_message: message,
            }),
        }
    }

    /// [`response`](Self::response) encoded for the request's encoding.
    pub fn response_body(&self, encoding: Encoding) -> Vec<u8> {
        let response = self.response();
        match (encoding, response.partial_success) {
            (Encoding::Protobuf, partial_success) => ExportTraceServiceResponse { partial_success }.encode_to_vec(),
            (Encoding::Json, None) => b"{}".to_vec(),
            // By hand: OTLP JSON writes int64 as a decimal string, which the
            // generated serde code does not.
            (Encoding::Json, Some(partial)) => serde_json::json!({
                "partialSuccess": {
                    "rejectedSpans": partial.rejected_spans.to_string(),
                    "errorMessage": partial.error_message,
                }
            })
            .to_string()
            .into_bytes(),
        }
    }
}

/// Totals since the receiver was made (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Requests taken (decoded and published).
    pub requests: u64,
    /// Requests refused (415, 413, 400, 503).
    pub failed_requests: u64,
    /// Spans received in requests taken.
    pub spans: u64,
    /// Spans mapped to events.
    pub mapped: u64,
    /// Spans dropped as not GenAI.
    pub dropped: u64,
    /// Spans refused.
    pub rejected: u64,
    /// Events published.
    pub events: u64,
    /// Events skipped as repeats.
    pub duplicates: u64,
    /// Attributes left out.
    pub invalid_attributes: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    failed_requests: AtomicU64,
    spans: AtomicU64,
    mapped: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    events: AtomicU64,
    duplicates: AtomicU64,
    invalid_attributes: AtomicU64,
}

/// An OTLP trace receiver feeding one bus: the mapping's options, the
/// conversation ids of recent traces, and counters. Share it behind an
/// `Arc` between request handlers.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use plugbus::otlp::{Encoding, MapOptions, Receiver};
/// let bus = plugbus::Bus::builder().build().await?;
/// let receiver = Receiver::new(MapOptions::default());
/// let body = br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{
///     "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
///     "name":"chat gpt-4.1","startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000800000000",
///     "attributes":[{"key":"gen_ai.operation.name","value":{"stringValue":"chat"}},
///                   {"key":"gen_ai.usage.input_tokens","value":{"intValue":"120"}}]}]}]}]}"#;
/// let export = receiver.export(&bus, body, Encoding::Json, None).await?;
/// assert_eq!((export.mapped, export.published), (1, 1));
/// # Ok(()) }
/// ```
pub struct Receiver {
    options: MapOptions,
    memo: Mutex<genai::TraceMemo>,
    counters: Counters,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver mapping spans with `options`.
    pub fn new(options: MapOptions) -> Receiver {
        Receiver {
            options,
            memo: Mutex::new(genai::TraceMemo::default()),
            counters: Counters::default(),
        }
    }

    /// The mapping's options.
    pub fn options(&self) -> MapOptions {
        self.options
    }

    /// [`export`](Self::export) for an HTTP request: the encoding from its
    /// `Content-Type` (a refusal is counted like any other), and the
    /// encoding the answer must use (JSON when the type is unknown).
    ///
    /// # Errors
    /// As for [`export`](Self::export), and
    /// [`OtlpError::UnsupportedMediaType`].
    pub async fn export_http(
        &self,
        bus: &Bus,
        body: &[u8],
        content_type: Option<&str>,
        content_encoding: Option<&str>,
    ) -> (Encoding, Result<Export, OtlpError>) {
        match Encoding::of(content_type) {
            Ok(encoding) => (encoding, self.export(bus, body, encoding, content_encoding).await),
            Err(e) => {
                self.refused(&e);
                (Encoding::Json, Err(e))
            }
        }
    }

    /// Counts (and logs) a request refused before it reached
    /// [`export`](Self::export): a body the HTTP server would not read whole
    /// (over [`MAX_BODY`]), say.
    pub fn refused(&self, error: &OtlpError) {
        self.counters.failed_requests.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(status = error.status(), "OTLP request refused: {error}");
    }

    /// Decodes, maps and publishes one request body (see the module doc).
    /// Returns once the events are as safe as the bus makes them (durable
    /// with a log, stored on NATS).
    ///
    /// # Errors
    /// [`OtlpError`]; nothing was published unless the error is
    /// `Unavailable` after part of a request was stored (then a retry
    /// stores only the rest: the ids are derived).
    pub async fn export(
        &self,
        bus: &Bus,
        body: &[u8],
        encoding: Encoding,
        content_encoding: Option<&str>,
    ) -> Result<Export, OtlpError> {
        let result = self.export_inner(bus, body, encoding, content_encoding).await;
        let c = &self.counters;
        match &result {
            Ok(e) => {
                c.requests.fetch_add(1, Ordering::Relaxed);
                c.spans.fetch_add(e.spans, Ordering::Relaxed);
                c.mapped.fetch_add(e.mapped, Ordering::Relaxed);
                c.dropped.fetch_add(e.dropped, Ordering::Relaxed);
                c.rejected.fetch_add(e.rejected.len() as u64, Ordering::Relaxed);
                c.events.fetch_add(e.published, Ordering::Relaxed);
                c.duplicates.fetch_add(e.duplicates, Ordering::Relaxed);
                c.invalid_attributes.fetch_add(e.invalid_attributes, Ordering::Relaxed);
            }
            Err(e) => self.refused(e),
        }
        result
    }

    async fn export_inner(
        &self,
        bus: &Bus,
        body: &[u8],
        encoding: Encoding,
        content_encoding: Option<&str>,
    ) -> Result<Export, OtlpError> {
        // Decoding and mapping are CPU work (bounded by the limits above, up
        // to a few hundred ms for the largest request): on a multi-threaded
        // runtime the thread is handed over for it, so the server's other
        // requests (health checks, events) run on the other workers.
        let work = || -> Result<Mapping, OtlpError> {
            let request = decode(body, encoding, content_encoding)?;
            // The lock is held only while mapping (no await inside).
            let mut memo = self.memo.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(map_request(&request, self.options, &mut memo))
        };
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let mapping = if multi_threaded {
            tokio::task::block_in_place(work)?
        } else {
            work()?
        };
        if mapping.too_large {
            return Err(OtlpError::TooLarge(format!(
                "its spans map to more than {MAX_MAPPED} bytes of events (a resource's service.name or a conversation id is copied into each of its events)"
            )));
        }
        if mapping.invalid_attributes > 0 {
            tracing::warn!(
                count = mapping.invalid_attributes,
                "OTLP spans with invalid attributes (left out of the events): {}",
                mapping.invalid_messages.join("; ")
            );
        }
        for rejected in mapping.rejected.iter().take(3) {
            tracing::warn!(span = %rejected.span, "OTLP span refused: {}", rejected.reason);
        }
        let mut export = Export {
            spans: mapping.spans,
            mapped: mapping.mapped,
            dropped: mapping.dropped,
            rejected: mapping.rejected,
            invalid_attributes: mapping.invalid_attributes,
            ..Export::default()
        };
        // A span whose event its schema refuses (`--schemas`) or the log
        // cannot hold is refused alone, in the partial success, not the whole
        // request (which the exporter would drop or retry forever). A span
        // mapped to two events (a tool call's start and end) is refused
        // whole: none of its events is published.
        let mut refused: Vec<(String, String)> = Vec::new();
        let mut refused_spans: std::collections::HashSet<String> = std::collections::HashSet::new();
        for event in &mapping.events {
            let reason = match bus.admit_one(event) {
                Err(e) => Some(format!("its event is refused by its schema: {e}")),
                Ok(()) => match bus.event_log().map(|log| log.check_size(event)) {
                    Some(Err(e)) => Some(format!("its event is larger than the log's largest frame ({e})")),
                    _ => None,
                },
            };
            if let Some(reason) = reason {
                let span = span_of(event.id());
                if refused_spans.insert(span.clone()) {
                    refused.push((span, reason));
                }
            }
        }
        let events: Vec<crate::Event> = if refused.is_empty() {
            mapping.events
        } else {
            mapping
                .events
                .into_iter()
                .filter(|e| !refused_spans.contains(&span_of(e.id())))
                .collect()
        };
        for (span, reason) in refused {
            export.mapped = export.mapped.saturating_sub(1);
            export.rejected.push(Rejected { span, reason });
        }
        if events.is_empty() {
            return Ok(export);
        }
        let published = bus.publish_once_admitted(events).await.map_err(|e| match e {
            LogError::Refused(reason) => OtlpError::Refused(reason),
            other => OtlpError::Unavailable(other.to_string()),
        })?;
        export.published = published.events.len() as u64;
        export.duplicates = published.duplicates as u64;
        Ok(export)
    }

    /// Totals since this receiver was made.
    pub fn stats(&self) -> ReceiverStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReceiverStats {
            requests: get(&c.requests),
            failed_requests: get(&c.failed_requests),
            spans: get(&c.spans),
            mapped: get(&c.mapped),
            dropped: get(&c.dropped),
            rejected: get(&c.rejected),
            events: get(&c.events),
            duplicates: get(&c.duplicates),
            invalid_attributes: get(&c.invalid_attributes),
        }
    }
}
