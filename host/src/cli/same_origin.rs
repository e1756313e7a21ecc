//! Refuses what a web browser sends to `plugbus serve` on behalf of another
//! site: a page the operator visits must not post events, redrive dead
//! letters or read the API through the operator's browser.
//!
//! - **DNS rebinding** (a page's own name made to resolve to 127.0.0.1,
//!   which then reads the API as same-origin): a host listening on loopback
//!   answers only requests whose `Host` is an IP address, `localhost` (or a
//!   name under it), or a name given with `--allow-host`. A host listening
//!   on another address checks `Host` only when `--allow-host` lists names.
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
    /// extra names `allowed`.
    pub fn new(listen: IpAddr, allowed: &[String]) -> SameOrigin {
        SameOrigin {
            loopback: listen.is_loopback(),
            allowed: Arc::new(allowed.iter().map(|h| h.to_ascii_lowercase()).collect()),
        }
    }

    /// Why a request with these `headers` and `method` is refused, if it is.
    pub fn refusal(&self, method: &Method, headers: &HeaderMap) -> Option<String> {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
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

/// The middleware: a refused request gets 403 and `{"error": reason}`.
pub async fn guard(State(rules): State<SameOrigin>, request: Request, next: Next) -> Response {
    match rules.refusal(request.method(), request.headers()) {
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
            assert_eq!(rules.refusal(&Method::GET, &headers(&[("host", host)])), None, "{host}");
        }
        for host in ["rebind.attacker.example:7070", "localhost.attacker.example", "[zz]:1"] {
            let refused = rules.refusal(&Method::GET, &headers(&[("host", host)]));
            assert!(refused.is_some_and(|r| r.contains("--allow-host")), "{host}");
        }
        // Bound elsewhere, with no list: any name (a LAN host's DNS name).
        let public = SameOrigin::new("0.0.0.0".parse().unwrap(), &[]);
        assert_eq!(
            public.refusal(&Method::GET, &headers(&[("host", "bus.lan:7070")])),
            None
        );
    }

    #[test]
    fn cross_site_changes_are_refused_and_same_origin_ones_taken() {
        let rules = SameOrigin::new("127.0.0.1".parse().unwrap(), &[]);
        let post = |pairs: &[(&'static str, &str)]| rules.refusal(&Method::POST, &headers(pairs));
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
        );
        assert_eq!(get, None);
    }
}
