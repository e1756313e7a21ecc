//! Refuses what a web browser sends to `plugbus serve` on behalf of another
//! site: a page the operator visits must not post events, redrive dead
//! letters or read the API through the operator's browser.
//!
//! - **DNS rebinding** (a page's own name made to resolve to 127.0.0.1,
//!   which then reads the API as same-origin): a host listening on loopback
//!   answers only requests whose `Host` is an IP address, `localhost` (or a
//!   name under it), or a name given with `--allow-host`. A host listening
//!   on another address checks `Host` only when `--allow-host` lists names.
//!   The name of an absolute-form target (`GET http://name/…`) is checked
//!   as `Host` is, and a request with two `Host` headers, a non-ASCII one,
//!   or none at all in HTTP/1.1 is answered 400 (RFC 9112), so no name
//!   slips past unread.
//! - **Cross-site requests** (a form or `fetch(…, {mode: "no-cors"})` from
//!   another origin, which the browser sends without asking): a request
//!   that changes something (any method but GET, HEAD and OPTIONS) is
//!   refused when the browser says it is cross-site or same-site
//!   (`Sec-Fetch-Site`), or when its `Origin` is not this host's.
//!
//! Clients that are not browsers (agents, SDKs, `curl`, OTLP exporters)
//! send neither `Origin` nor `Sec-Fetch-Site` and are not affected; the
//! dashboard's own requests are same-origin.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Which requests the server answers (see the module doc).
#[derive(Debug, Clone)]
pub struct SameOrigin {
    /// The server listens on a loopback address only.
    loopback: bool,
    /// Names given with `--allow-host` (lower case).
    allowed: Arc<Vec<String>>,
}

impl SameOrigin {
    /// The rules for a server listening on `listen`, answering to the
    /// extra names `allowed` (each as [`allowed_host`] reads it).
    pub fn new(listen: IpAddr, allowed: &[String]) -> SameOrigin {
        SameOrigin {
            loopback: listen.is_loopback(),
            allowed: Arc::new(
                allowed
                    .iter()
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                    .collect(),
            ),
        }
    }

    /// Why a request with these `headers` and `method` is refused, if it is.
    /// `target_authority`: the host of an absolute-form request target
    /// (`GET http://name/path`), which a server takes instead of `Host`
    /// (RFC 9112, 3.2.2), checked as `Host` is. (A request whose `Host` is
    /// malformed was answered 400 before: [`malformed_host`].)
    pub fn refusal(&self, method: &Method, headers: &HeaderMap, target_authority: Option<&str>) -> Option<String> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if let Some(target) = target_authority
            && !self.host_allowed(target)
        {
            return Some(format!(
                "the request's target names `{target}`, which is not allowed (absolute-form targets are checked as Host is)"
            ));
        }
        if let Some(host) = host
            && !self.host_allowed(host)
        {
            return Some(format!(
                "Host `{host}` is not allowed: a server on {} answers only to IP addresses, localhost{} \
                 (a web page's name resolved to this host; add --allow-host NAME for a name of yours)",
                if self.loopback { "loopback" } else { "this address" },
                if self.allowed.is_empty() {
                    String::new()
                } else {
                    format!(" and {}", self.allowed.join(", "))
                }
            ));
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return None;
        }
        let fetch_site = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok());
        if let Some(site @ ("cross-site" | "same-site")) = fetch_site {
            return Some(format!(
                "a {site} request from a web page is refused (Sec-Fetch-Site): only the dashboard's own \
                 pages and clients that are not browsers may change anything"
            ));
        }
        let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok())?;
        let origin_authority = origin.split_once("://").map(|(_, rest)| rest);
        let same = match (origin_authority, host) {
            (Some(from), Some(host)) => from.eq_ignore_ascii_case(host),
            _ => false,
        };
        (!same).then(|| {
            format!(
                "a request from the web page at {origin} is refused: it is not this host's origin ({})",
                host.unwrap_or("no Host")
            )
        })
    }

    /// Whether a request naming `host` (`name[:port]`) is answered.
    fn host_allowed(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // An IPv6 literal: `[::1]:7070`.
            Some(rest) => return rest.split_once(']').is_some_and(|(ip, _)| ip.parse::<IpAddr>().is_ok()),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.parse::<IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if self.allowed.contains(&name) {
            return true;
        }
        !self.loopback && self.allowed.is_empty()
    }
}

/// What is wrong with a request's `Host` headers, if anything (RFC 9112,
/// 3.2: a server answers 400 to a request with none, when `required`, or
/// with more than one): a second `Host` the check below never read, or
/// one that is not ASCII, would otherwise pass unchecked.
pub fn malformed_host(headers: &HeaderMap, required: bool) -> Option<&'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some("more than one Host header: which one names this server is ambiguous"),
        (Some(host), None) if host.to_str().is_err() => Some("a Host header that is not ASCII text is no host name"),
        (None, _) if required => Some("no Host header: an HTTP/1.1 request must name the host it is for"),
        _ => None,
    }
}

/// A `--allow-host` value: a DNS name (letters, digits, `-`, dots between
/// labels; a trailing dot is the same name), lower-cased. A wildcard, a
/// port or anything else would never match a request's `Host`, so it is
/// refused instead of being taken without a word.
///
/// # Errors
/// What is wrong with the value.
pub fn allowed_host(value: &str) -> Result<String, String> {
    let name = value.trim_end_matches('.');
    if let Some(fault) = plugbus::http::host_name_fault(name) {
        return Err(format!(
            "`{value}` is not a host name ({fault}; no wildcards, ports or addresses: IP addresses are always answered)"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// The middleware: a refused request gets 403 and `{"error": reason}`.
pub async fn guard(State(rules): State<SameOrigin>, request: Request, next: Next) -> Response {
    let target = request.uri().authority().map(|a| a.as_str().to_owned());
    let host_required = request.version() >= axum::http::Version::HTTP_11 && target.is_none();
    if let Some(reason) = malformed_host(request.headers(), host_required) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": reason })),
        )
            .into_response();
    }
    match rules.refusal(request.method(), request.headers(), target.as_deref()) {
        Some(reason) => {
            tracing::warn!(
                method = %request.method(),
                path = request.uri().path(),
                "request refused: {reason}"
            );
            (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({ "error": reason })),
            )
                .into_response()
        }
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_loopback_server_answers_ip_addresses_and_localhost_only() {
        let rules = SameOrigin::new("127.0.0.1".parse().unwrap(), &["agents.internal".into()]);
        for host in [
            "127.0.0.1:7070",
            "[::1]:7070",
            "localhost:7070",
            "LOCALHOST",
            "app.localhost:7070",
            "agents.internal:7070",
            "10.1.2.3",
        ] {
            assert_eq!(
                rules.refusal(&Method::GET, &headers(&[("host", host)]), None),
                None,
                "{host}"
            );
        }
        for host in ["rebind.attacker.example:7070", "localhost.attacker.example", "[zz]:1"] {
            let refused = rules.refusal(&Method::GET, &headers(&[("host", host)]), None);
            assert!(refused.is_some_and(|r| r.contains("--allow-host")), "{host}");
        }
        // Bound elsewhere, with no list: any name (a LAN host's DNS name).
        let public = SameOrigin::new("0.0.0.0".parse().unwrap(), &[]);
        assert_eq!(
            public.refusal(&Method::GET, &headers(&[("host", "bus.lan:7070")]), None),
            None
        );
    }

    #[test]
    fn cross_site_changes_are_refused_and_same_origin_ones_taken() {
        let rules = SameOrigin::new("127.0.0.1".parse().unwrap(), &[]);
        let post = |pairs: &[(&'static str, &str)]| rules.refusal(&Method::POST, &headers(pairs), None);
        assert_eq!(post(&[("host", "127.0.0.1:7070")]), None, "curl, an SDK");
        assert_eq!(
            post(&[
                ("host", "127.0.0.1:7070"),
                ("origin", "http://127.0.0.1:7070"),
                ("sec-fetch-site", "same-origin")
            ]),
            None,
            "the dashboard"
        );
        for pairs in [
            &[("host", "127.0.0.1:7070"), ("origin", "http://evil.example:17880")][..],
            &[("host", "127.0.0.1:7070"), ("origin", "null")],
            &[("host", "127.0.0.1:7070"), ("origin", "http://127.0.0.1:7071")],
            &[("host", "127.0.0.1:7070"), ("sec-fetch-site", "cross-site")],
            &[("host", "localhost:7070"), ("sec-fetch-site", "same-site")],
        ] {
            assert!(post(pairs).is_some(), "{pairs:?}");
        }
        // Reading is left to the browser's same-origin policy (no CORS headers).
        let get = rules.refusal(
            &Method::GET,
            &headers(&[("host", "127.0.0.1:7070"), ("origin", "http://evil.example")]),
            None,
        );
        assert_eq!(get, None);
    }

    /// Only the first `Host` was read, a non-ASCII one passed unread, and an
    /// absolute-form target's name was never looked at.
    #[test]
    fn every_name_the_request_gives_is_checked() {
        let rules = SameOrigin::new("127.0.0.1".parse().unwrap(), &[]);
        let mut two = headers(&[("host", "localhost:7070")]);
        two.append(header::HOST, "evil.example".parse().unwrap());
        assert!(malformed_host(&two, true).is_some_and(|r| r.contains("more than one")));
        let mut raw = HeaderMap::new();
        raw.insert(
            header::HOST,
            axum::http::HeaderValue::from_bytes(b"\xc3\xa9vil.example").unwrap(),
        );
        assert!(malformed_host(&raw, true).is_some_and(|r| r.contains("not ASCII")));
        assert!(malformed_host(&HeaderMap::new(), true).is_some_and(|r| r.contains("no Host")));
        assert_eq!(malformed_host(&HeaderMap::new(), false), None, "HTTP/1.0");
        let refused = rules.refusal(&Method::GET, &headers(&[("host", "localhost")]), Some("evil.example"));
        assert!(refused.is_some_and(|r| r.contains("evil.example")));
        assert_eq!(
            rules.refusal(&Method::GET, &HeaderMap::new(), Some("127.0.0.1:7070")),
            None
        );
    }

    #[test]
    fn allowed_hosts_are_names_that_can_match() {
        assert_eq!(allowed_host("Bus.Example.").unwrap(), "bus.example");
        for bad in [
            "",
            "a b",
            "*.dev.test",
            "bus.example:7070",
            ".",
            "-a.example",
            "10.1.1.1",
        ] {
            assert!(allowed_host(bad).is_err(), "{bad:?}");
        }
        let rules = SameOrigin::new("127.0.0.1".parse().unwrap(), &[allowed_host("other.test.").unwrap()]);
        for host in ["other.test", "other.test.", "OTHER.test:7070"] {
            assert_eq!(
                rules.refusal(&Method::GET, &headers(&[("host", host)]), None),
                None,
                "{host}"
            );
        }
    }
}
