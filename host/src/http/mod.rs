//! Outbound HTTP for plugins (`wasi:http` 0.2), granted per plugin and
//! safe under replay: see docs/http.md.
//!
//! - `grant`: the manifest's `[http]` table (origins, special addresses, limits);
//! - `address`: which addresses need a grant of their own (loopback, private,
//!   link-local, the metadata address…);
//! - `journal`: each request's outcome by (plugin, event id, request index),
//!   answering it again instead of sending it twice;
//! - `send`: the `wasi:http` hook every request passes;
//! - `stats`: per-plugin counters.

mod address;
mod grant;
mod journal;
pub(crate) mod send;
pub(crate) mod stats;

pub use address::{IpRange, special_address};
pub(crate) use grant::is_subdomain;
pub use grant::{HostRule, HttpGrant, Origin, RawHttp, Scheme, host_name_fault};
pub use journal::{
    JOURNAL_FILE, JournalError, Journaled, MEMORY_ENTRIES, Recorded, RequestJournal, RequestKey, fingerprint,
};
pub use stats::{HttpCounts, LATENCY_BOUNDS_MS};
