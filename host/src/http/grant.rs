//! A plugin's `[http]` grant: which origins it may send requests to, which
//! special addresses those may reach, and the limits on its requests.
//!
//! ```toml
//! [http]
//! allow = ["https://hooks.example.com", "http://127.0.0.1:4318", "https://*.example.org"]
//! allow_addresses = ["10.0.0.0/8"]   # names may resolve into these private ranges
//! max_concurrent = 4                 # requests in flight at once
//! per_second = 20                    # requests started per second (burst: the same)
//! request_body_kib = 1024
//! response_body_kib = 1024
//! connect_timeout_ms = 5000
//! timeout_ms = 10_000                # a whole request, connect to last body byte
//! io_budget_ms = 30_000              # time one event may spend waiting on requests
//! ```
//!
//! An origin is `scheme://host[:port]`: scheme `http` or `https`, a host
//! name, an IP literal (`[::1]` for IPv6), or `*.name` for every subdomain of
//! `name` (not `name` itself). No port means the scheme's default. No paths,
//! no other wildcards.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::http::address::IpRange;

/// `[http]` as written in the manifest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Origins the plugin may send requests to.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Loopback, private or link-local addresses and ranges (`127.0.0.1`,
    /// `10.0.0.0/8`) that a granted host name may resolve to.
    #[serde(default)]
    pub allow_addresses: Vec<String>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// Requests started per second.
    pub per_second: Option<u32>,
    /// Largest request body, KiB.
    pub request_body_kib: Option<u64>,
    /// Largest response body, KiB.
    pub response_body_kib: Option<u64>,
    /// Connect timeout, milliseconds.
    pub connect_timeout_ms: Option<u64>,
    /// Whole-request timeout, milliseconds.
    pub timeout_ms: Option<u64>,
    /// Time one event may spend waiting on its requests, milliseconds.
    pub io_budget_ms: Option<u64>,
}

/// Requests in flight at once, by default: an observer alerting or
/// exporting needs one or two; 4 leaves room without letting one plugin
/// hold many sockets.
pub const DEFAULT_MAX_CONCURRENT: u32 = 4;
/// Requests started per second, by default: far above alerting, enough for
/// an exporter that batches; bounds what a looping plugin can do to a server.
pub const DEFAULT_PER_SECOND: u32 = 20;
/// Largest request or response body by default, 1 MiB: an alert or a batch
/// of spans is a few KiB; a response is read whole into host memory (to be
/// journaled), so it must be bounded.
pub const DEFAULT_BODY_BYTES: usize = 1 << 20;
/// Connect timeout by default: a reachable server answers a SYN in
/// milliseconds; 5 s covers a slow network without pinning a dead one long.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request timeout by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time one event may spend waiting on requests by default: three requests
/// at the whole-request timeout.
pub const DEFAULT_IO_BUDGET: Duration = Duration::from_secs(30);
/// Upper bounds a manifest may ask for (past them a typo is likelier than intent).
const MAX_CONCURRENT: u32 = 256;
const MAX_PER_SECOND: u32 = 10_000;
const MAX_BODY_KIB: u64 = 64 << 10;
const MAX_TIMEOUT_MS: u64 = 600_000;

/// A scheme a plugin may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The host part of an allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// This name exactly (lower case).
    Name(String),
    /// Any subdomain of this name (`*.example.com`), not the name itself.
    Subdomains(String),
    /// This address literally.
    Ip(IpAddr),
}

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The scheme.
    pub scheme: Scheme,
    /// The host.
    pub host: HostRule,
    /// The port (the scheme's default when the grant names none).
    pub port: u16,
    /// The origin as written in the manifest.
    pub text: String,
}

impl Origin {
    /// Parses `scheme://host[:port]`.
    ///
    /// # Errors
    /// A message saying what is wrong with `text`.
    ///
    /// ```
    /// use plugbus::http::{HostRule, Origin};
    /// let o = Origin::parse("https://*.example.com").unwrap();
    /// assert_eq!(o.host, HostRule::Subdomains("example.com".into()));
    /// assert_eq!(o.port, 443);
    /// assert!(Origin::parse("https://example.com/path").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Origin, String> {
        let bad =
            |why: &str| format!("`{text}`: {why} (expected scheme://host[:port], e.g. https://hooks.example.com)");
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("an origin has no path, query, fragment or user"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| {
            bad(if rest.starts_with('[') && !rest.contains(']') {
                "an IPv6 address needs its closing `]`"
            } else {
                "the port is not a number"
            })
        })?;
        let port = port.unwrap_or(scheme.default_port());
        if port == 0 {
            return Err(bad("port 0 is no port a server listens on"));
        }
        let host = if let Some(ip) = parse_ip_host(host) {
            HostRule::Ip(ip)
        } else if let Some(parent) = host.strip_prefix("*.") {
            check_name(parent).map_err(|why| bad(&why))?;
            if !parent.contains('.') {
                return Err(bad(&format!(
                    "`*.{parent}` would grant every name under a top-level domain; name a domain (`*.example.{parent}`)"
                )));
            }
            HostRule::Subdomains(parent.to_ascii_lowercase())
        } else {
            check_name(host).map_err(|why| bad(&why))?;
            HostRule::Name(host.to_ascii_lowercase())
        };
        Ok(Origin {
            scheme,
            host,
            port,
            text: text.to_owned(),
        })
    }

    /// Whether a request to `scheme://host:port` is within this origin.
    /// `host` is lower case, without brackets.
    pub fn admits(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if scheme != self.scheme || port != self.port {
            return false;
        }
        match &self.host {
            HostRule::Name(name) => host == name,
            HostRule::Subdomains(parent) => is_subdomain(host, parent),
            HostRule::Ip(ip) => parse_ip_host(host) == Some(*ip),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match &self.host {
            HostRule::Name(name) => name.clone(),
            HostRule::Subdomains(parent) => format!("*.{parent}"),
            HostRule::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            HostRule::Ip(ip) => ip.to_string(),
        };
        write!(f, "{}://{host}:{}", self.scheme.name(), self.port)
    }
}

/// Whether `name` is a subdomain of `parent` (`a.example.com` of
/// `example.com`; not `example.com` itself, nor `badexample.com`).
pub(crate) fn is_subdomain(name: &str, parent: &str) -> bool {
    name.strip_suffix(parent)
        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
}

/// `host` and `port` of `host[:port]`, `[v6][:port]`; `None` for a bad port.
/// An empty port (`host:`) is the scheme's default, as RFC 3986 says.
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, port_of(port)?)),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port_of(port)?)),
        None => Some((authority, None)),
    }
}

/// A port written in decimal digits only (Rust's parser also takes `+80`);
/// `Some(None)` for an empty one.
fn port_of(text: &str) -> Option<Option<u16>> {
    if text.is_empty() {
        return Some(None);
    }
    digits(text)?.parse().ok().map(Some)
}

/// `text` when it is decimal digits only.
pub(crate) fn digits(text: &str) -> Option<&str> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

/// An IP literal host (brackets already removed).
pub(crate) fn parse_ip_host(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// Why `name` is not a DNS host name, if it is not one: dot-separated
/// labels of ASCII letters, digits and `-` (not first or last), each at most
/// 63 bytes, 253 in all (RFC 1123), and a last label that is not a number
/// (`2130706433`, `0x7f.1` and `256.1.1.1` are read as IPv4 addresses by URL
/// parsers, or refused, so they could only ever stand for an address).
/// A trailing root dot is the caller's to remove. One rule for every host
/// name the host is given: `[http] allow`, `serve --allow-host`.
///
/// ```
/// assert!(plugbus::http::host_name_fault("hooks.example.com").is_none());
/// assert!(plugbus::http::host_name_fault("0x7f.1").is_some());
/// assert!(plugbus::http::host_name_fault("*.example.com").is_some());
/// ```
pub fn host_name_fault(name: &str) -> Option<&'static str> {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Some("letters, digits and `-` in dot-separated labels of at most 63 bytes");
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if hex || last.bytes().all(|b| b.is_ascii_digit()) {
        return Some("it ends in a number, which URL parsers read as an IPv4 address");
    }
    None
}

fn check_name(name: &str) -> Result<(), String> {
    match host_name_fault(name) {
        None => Ok(()),
        Some(fault) => Err(format!(
            "`{name}` is not a host name: {fault} (wildcards: only a leading `*.`; an IP address in its usual form, `127.0.0.1`)"
        )),
    }
}

/// A plugin's validated `[http]` grant: no grant at all means every request
/// is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    /// Allowed origins.
    pub allow: Vec<Origin>,
    /// Special addresses granted names may resolve to (literal IP origins
    /// add their own address here).
    pub allow_addresses: Vec<IpRange>,
    /// Requests in flight at once; one more is refused.
    pub max_concurrent: u32,
    /// Requests started per second; one more is refused.
    pub per_second: u32,
    /// Largest request body in bytes; a larger one is refused.
    pub request_body_bytes: usize,
    /// Largest response body in bytes; a larger one fails the request.
    pub response_body_bytes: usize,
    /// Connect timeout (the guest may ask for less, not more).
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Time one event may spend waiting on requests, beyond its deadline.
    pub io_budget: Duration,
}

impl Default for HttpGrant {
    /// No origins: every request refused; the default limits.
    fn default() -> Self {
        HttpGrant {
            allow: Vec::new(),
            allow_addresses: Vec::new(),
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            per_second: DEFAULT_PER_SECOND,
            request_body_bytes: DEFAULT_BODY_BYTES,
            response_body_bytes: DEFAULT_BODY_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            io_budget: DEFAULT_IO_BUDGET,
        }
    }
}

impl HttpGrant {
    /// Validates `[http]`.
    ///
    /// # Errors
    /// A message naming the field at fault (`http.allow`, …).
    pub fn validate(raw: RawHttp) -> Result<HttpGrant, String> {
        let allow = raw
            .allow
            .iter()
            .map(|o| Origin::parse(o).map_err(|e| format!("http.allow: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        // A literal-IP origin reaches its own address at its own port (the
        // request's check says so); it grants the address to no name.
        let allow_addresses = raw
            .allow_addresses
            .iter()
            .map(|a| IpRange::parse(a).map_err(|e| format!("http.allow_addresses: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if allow.is_empty() && !allow_addresses.is_empty() {
            return Err(
                "http.allow_addresses without http.allow grants nothing: list the origins the plugin may reach in http.allow"
                    .into(),
            );
        }
        let range = |field: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(format!("http.{field}: {v} is outside {lo}..={hi}"))
            }
        };
        let d = HttpGrant::default();
        let ms = |field: &str, v: Option<u64>, default: Duration| -> Result<Duration, String> {
            v.map(|v| range(field, v, 1, MAX_TIMEOUT_MS).map(Duration::from_millis))
                .transpose()
                .map(|v| v.unwrap_or(default))
        };
        let kib = |field: &str, v: Option<u64>, default: usize| -> Result<usize, String> {
            v.map(|v| range(field, v, 1, MAX_BODY_KIB).map(|k| (k as usize) << 10))
                .transpose()
                .map(|v| v.unwrap_or(default))
        };
        Ok(HttpGrant {
            allow,
            allow_addresses,
            max_concurrent: raw
                .max_concurrent
                .map(|v| range("max_concurrent", v.into(), 1, MAX_CONCURRENT.into()).map(|v| v as u32))
                .transpose()?
                .unwrap_or(d.max_concurrent),
            per_second: raw
                .per_second
                .map(|v| range("per_second", v.into(), 1, MAX_PER_SECOND.into()).map(|v| v as u32))
                .transpose()?
                .unwrap_or(d.per_second),
            request_body_bytes: kib("request_body_kib", raw.request_body_kib, d.request_body_bytes)?,
            response_body_bytes: kib("response_body_kib", raw.response_body_kib, d.response_body_bytes)?,
            connect_timeout: ms("connect_timeout_ms", raw.connect_timeout_ms, d.connect_timeout)?,
            timeout: ms("timeout_ms", raw.timeout_ms, d.timeout)?,
            io_budget: ms("io_budget_ms", raw.io_budget_ms, d.io_budget)?,
        })
    }

    /// Whether the plugin may send any request at all.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty()
    }

    /// The origin admitting `scheme://host:port`, if any.
    pub fn origin_for(&self, scheme: Scheme, host: &str, port: u16) -> Option<&Origin> {
        self.allow.iter().find(|o| o.admits(scheme, host, port))
    }

    /// Whether a special address was granted by `allow_addresses` (to any
    /// granted origin).
    pub fn address_granted(&self, ip: IpAddr) -> bool {
        self.allow_addresses.iter().any(|r| r.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_admit_only_what_they_say() {
        let o = Origin::parse("https://hooks.example.com").unwrap();
        assert!(o.admits(Scheme::Https, "hooks.example.com", 443));
        assert!(!o.admits(Scheme::Http, "hooks.example.com", 443));
        assert!(!o.admits(Scheme::Https, "hooks.example.com", 8443));
        assert!(!o.admits(Scheme::Https, "evil.hooks.example.com", 443));
        let sub = Origin::parse("https://*.example.com").unwrap();
        assert!(sub.admits(Scheme::Https, "a.example.com", 443));
        assert!(sub.admits(Scheme::Https, "a.b.example.com", 443));
        assert!(!sub.admits(Scheme::Https, "example.com", 443));
        assert!(!sub.admits(Scheme::Https, "badexample.com", 443));
        let v6 = Origin::parse("http://[::1]:4318").unwrap();
        assert!(v6.admits(Scheme::Http, "::1", 4318));
        for bad in [
            "hooks.example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://*.*.com",
            "https://x.com:port",
            "https://user@x.com",
            "https://ex*ample.com",
            "https://example.com:0",
            "https://*.com",
            "https://0x7f.1",
            "https://2130706433",
            "https://256.1.1.1",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn literal_ip_origins_grant_their_address_to_no_name_and_fields_are_bounded() {
        let grant = HttpGrant::validate(RawHttp {
            allow: vec!["http://127.0.0.1:4318".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(!grant.address_granted("127.0.0.1".parse().unwrap()));
        let e = HttpGrant::validate(RawHttp {
            allow_addresses: vec!["127.0.0.1".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("without http.allow"), "{e}");
        for (authority, split) in [
            ("127.0.0.1:", Some(("127.0.0.1", None))),
            ("[::1]:", Some(("::1", None))),
            ("h:8080", Some(("h", Some(8080)))),
            ("h:+80", None),
            ("h:8o", None),
        ] {
            assert_eq!(split_host_port(authority), split, "{authority}");
        }
        let e = Origin::parse("http://[::1").unwrap_err();
        assert!(e.contains("closing `]`"), "{e}");
        let e = HttpGrant::validate(RawHttp {
            timeout_ms: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("http.timeout_ms"), "{e}");
        let e = HttpGrant::validate(RawHttp {
            allow: vec!["https://x.com/a".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.starts_with("http.allow"), "{e}");
    }
}
