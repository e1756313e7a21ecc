//! Per-plugin counters of outbound requests, shown in `GET /plugins`,
//! `/metrics` and the dashboard.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the request latency histogram, in milliseconds (a last
/// bucket holds the rest): local collectors answer in ~1 ms, remote hooks
/// in tens to hundreds.
pub const LATENCY_BOUNDS_MS: [u64; 8] = [1, 5, 10, 50, 100, 500, 1000, 5000];

/// Live counters (one set per loaded plugin).
#[derive(Default)]
pub(crate) struct HttpStats {
    pub sent: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub replayed: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    latency_us: AtomicU64,
}

impl HttpStats {
    /// A request (sent or failed) took `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        let ms = elapsed.as_millis() as u64;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_us
            .fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn snapshot(&self) -> HttpCounts {
        HttpCounts {
            sent: self.sent.load(Relaxed),
            refused: self.refused.load(Relaxed),
            failed: self.failed.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            latency_ms: self.latency.iter().map(|c| c.load(Relaxed)).collect(),
            latency_sum_us: self.latency_us.load(Relaxed),
        }
    }
}

/// A plugin's outbound requests since it loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpCounts {
    /// Requests that got a response (any status).
    pub sent: u64,
    /// Requests refused by the grant, the address check or a limit (never sent).
    pub refused: u64,
    /// Requests that failed after the checks (connect, timeout, TLS, body size).
    pub failed: u64,
    /// Requests answered from the journal instead of being sent again.
    pub replayed: u64,
    /// Request body bytes sent.
    pub bytes_out: u64,
    /// Response body bytes received.
    pub bytes_in: u64,
    /// Requests per latency bucket: `≤` each of [`LATENCY_BOUNDS_MS`], then the rest.
    pub latency_ms: Vec<u64>,
    /// Their total time, in microseconds.
    pub latency_sum_us: u64,
}
