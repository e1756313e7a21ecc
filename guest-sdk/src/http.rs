//! Outbound HTTP from a plugin (`wasi:http` 0.2), with the `http` feature.
//!
//! The host sends a request only if the plugin's manifest grants its origin
//! (`[http] allow = ["https://hooks.example.com"]`); otherwise, and past the
//! grant's limits, the call returns [`Error::Refused`]. When the host handles
//! an event again (after a trap, on restart, in `plugbus replay`) the same
//! request of the same event gets the answer recorded the first time and is
//! not sent twice, so a plugin needs no bookkeeping of its own for that.
//! Each live request carries an `Idempotency-Key` header for the receiver.
//!
//! ```ignore
//! let url = plugbus_guest::config("webhook_url").unwrap_or_default();
//! let response = plugbus_guest::http::post_json(&url, &serde_json::json!({ "text": "budget exceeded" }))?;
//! if !response.is_success() {
//!     plugbus_guest::warn!("webhook answered {}", response.status);
//! }
//! ```

use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

/// A response: status, headers, the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Header fields, in order, values as text (lossy).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The URL is not `http(s)://host[:port][/path]`.
    Url(String),
    /// The host refused or could not complete it: the `wasi:http` error
    /// code, e.g. `HttpRequestDenied` (no grant for the origin),
    /// `DestinationIpProhibited` (the name resolves into the host's own
    /// network), `ConnectionLimitReached` (a rate or concurrency limit),
    /// `ConnectionRefused`, `HttpResponseTimeout`.
    Refused(String),
    /// Writing the body or reading the response failed.
    Io(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Url(why) => write!(f, "bad URL: {why}"),
            Error::Refused(code) => write!(f, "request failed: {code}"),
            Error::Io(why) => write!(f, "request I/O: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// `GET url`.
///
/// # Errors
/// [`Error`] when no response came back.
pub fn get(url: &str) -> Result<Response, Error> {
    request("GET", url, &[], &[])
}

/// `POST url` with `value` as a JSON body (`Content-Type: application/json`).
///
/// # Errors
/// [`Error`] when no response came back.
pub fn post_json<T: serde::Serialize + ?Sized>(url: &str, value: &T) -> Result<Response, Error> {
    let body = serde_json::to_vec(value).map_err(|e| Error::Io(e.to_string()))?;
    request("POST", url, &[("content-type", "application/json")], &body)
}

/// Most bytes one `blocking-write-and-flush` may take (WASI 0.2).
const WRITE_CHUNK: usize = 4096;
/// Bytes asked for per read of the response body.
const READ_CHUNK: u64 = 64 << 10;

/// Sends `method url` with `headers` and `body`, and reads the whole response.
///
/// # Errors
/// [`Error`] when the URL is bad or no response came back.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, Error> {
    let (scheme, authority, path) = split_url(url)?;
    let mut fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect();
    if !body.is_empty() {
        fields.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let fields = Fields::from_list(&fields).map_err(|e| Error::Url(format!("header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_owned()),
    };
    let bad = |what: &str| Error::Url(format!("{}: bad {what}", shown(url)));
    request.set_method(&method).map_err(|()| bad("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
    request.set_authority(Some(authority)).map_err(|()| bad("authority"))?;
    request.set_path_with_query(Some(path)).map_err(|()| bad("path"))?;
    let outgoing = request
        .body()
        .map_err(|()| Error::Io("request body taken twice".into()))?;
    // Sent first, so the host reads the body while the guest writes it.
    let pending = outgoing_handler::handle(request, None).map_err(|code| Error::Refused(code_name(&code)))?;
    if !body.is_empty() {
        let stream = outgoing
            .write()
            .map_err(|()| Error::Io("request body stream taken twice".into()))?;
        for chunk in body.chunks(WRITE_CHUNK) {
            // A request the host answered without reading the body (refused,
            // or answered from its journal) closes the stream: the answer
            // below says what happened.
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
    let response = loop {
        match pending.get() {
            Some(answer) => break answer,
            None => pending.subscribe().block(),
        }
    };
    let response = match response {
        Ok(Ok(response)) => response,
        Ok(Err(code)) => return Err(Error::Refused(code_name(&code))),
        Err(()) => return Err(Error::Io("response taken twice".into())),
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| Error::Io("response body taken twice".into()))?;
    let stream = incoming
        .stream()
        .map_err(|()| Error::Io("response body stream taken twice".into()))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(Error::Io(e.to_debug_string())),
        }
    }
    Ok(Response { status, headers, body })
}

/// `url` as errors show it: scheme, host and port only (no user info, path or
/// query), since a webhook's URL is often its own secret (Slack's, a token
/// in the query), and an error goes to the host's log and `GET /plugins`.
fn shown(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let more = if matches!(&rest[end..], "" | "/") { "" } else { "/…" };
    format!("{scheme}{host}{more}")
}

/// `(scheme, authority, path-with-query)` of an absolute http(s) URL.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::Url(format!("{}: no scheme", shown(url))))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => {
            return Err(Error::Url(format!(
                "{}: scheme `{other}` is not http or https",
                shown(url)
            )));
        }
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(Error::Url(format!("{}: no host", shown(url))));
    }
    Ok((scheme, authority, path))
}

/// The `wasi:http` error code's name (and its detail, when it has one).
fn code_name(code: &ErrorCode) -> String {
    match code {
        ErrorCode::DnsError(payload) => format!("DnsError({})", payload.rcode.clone().unwrap_or_default()),
        ErrorCode::InternalError(Some(why)) => format!("InternalError({why})"),
        other => {
            let text = format!("{other:?}");
            let text = text.strip_prefix("ErrorCode::").unwrap_or(&text);
            text.split([' ', '(', '{']).next().unwrap_or(text).to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_show_only_the_origin_of_a_url() {
        for (url, shown) in [
            ("hooks.example.com/services/T0/B0/SECRET", "hooks.example.com/…"),
            (
                "https://user:pw@hooks.example.com/x?token=SECRET",
                "https://hooks.example.com/…",
            ),
            ("ftp://files.example.com/SECRET", "ftp://files.example.com/…"),
            ("http://127.0.0.1:4318/", "http://127.0.0.1:4318"),
            ("https:///SECRET", "https:///…"),
        ] {
            assert_eq!(super::shown(url), shown, "{url}");
        }
        let e = super::request("POST", "hooks.example.com/services/T0/B0/SECRET", &[], b"").unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
}
