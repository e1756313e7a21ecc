//! Deterministic time and randomness for plugins, so that replaying the same
//! events into the same plugin gives the same result, byte for byte.
//!
//! While a plugin handles an event:
//! - the WASI wall clock reads the event's time, and the monotonic clock the
//!   same instant in nanoseconds; each read advances both by 1 µs, so a
//!   plugin polling the clock still sees time pass, by an amount that depends
//!   only on its own code;
//! - `wasi:random/random` and `wasi:random/insecure` are a SHA-256 counter
//!   stream seeded by the plugin's name and the event's id: every event gets
//!   its own bytes, the same on every replay. They are therefore **not
//!   secret**: a plugin must not use them for keys or tokens;
//! - `wasi:random/insecure-seed` is fixed per plugin name, so Rust's
//!   `HashMap` iteration order repeats.
//!
//! Outside an event (`subscriptions()`, `restore`), time is the Unix epoch
//! and the stream is seeded by the plugin's name alone.
//!
//! What is *not* deterministic, by design: the epoch deadline is wall time
//! (a plugin can trap live and not on replay, or the reverse, on a loaded
//! machine; fuel is deterministic), WASI sleeps wait on the real clock, and
//! files in granted directories are whatever is on disk.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

use crate::event::Event;

/// How far each clock read advances virtual time.
const TICK_NANOS: u64 = 1_000;

/// The virtual time and random stream of one plugin instance, reset before
/// each call. Cheap to clone (shared with the WASI context).
#[derive(Clone)]
pub(crate) struct Determinism {
    time: Arc<VirtualTime>,
    rng: Arc<Mutex<Stream>>,
    plugin: Arc<str>,
}

#[derive(Default)]
struct VirtualTime {
    /// The event's time, in nanoseconds since the Unix epoch.
    base: AtomicU64,
    /// Clock reads during this call.
    reads: AtomicU64,
}

impl VirtualTime {
    fn read(&self) -> u64 {
        let n = self.reads.fetch_add(1, Ordering::Relaxed);
        self.base
            .load(Ordering::Relaxed)
            .saturating_add(n.saturating_mul(TICK_NANOS))
    }
}

/// SHA-256 in counter mode over a 32-byte seed: portable and stable forever
/// (unlike a library generator whose algorithm may change between versions).
/// The seed is computed on first use: most events never read randomness,
/// and a replay of thousands of events should not hash each one's id.
struct Stream {
    plugin: Arc<str>,
    /// The event whose id seeds the stream (none outside events).
    event: Option<Event>,
    seed: Option<[u8; 32]>,
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl Stream {
    fn new(plugin: Arc<str>, event: Option<Event>) -> Stream {
        Stream {
            plugin,
            event,
            seed: None,
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }

    fn fill(&mut self, dst: &mut [u8]) {
        let seed = *self
            .seed
            .get_or_insert_with(|| seed(&self.plugin, self.event.as_ref().map_or("", Event::id)));
        for byte in dst {
            if self.used == self.block.len() {
                let mut h = Sha256::new();
                h.update(seed);
                h.update(self.counter.to_le_bytes());
                self.block = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
    }
}

fn seed(plugin: &str, event_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"plugbus-random\0");
    h.update(plugin.as_bytes());
    h.update([0]);
    h.update(event_id.as_bytes());
    h.finalize().into()
}

impl Determinism {
    pub fn new(plugin: Arc<str>) -> Determinism {
        Determinism {
            time: Arc::default(),
            rng: Arc::new(Mutex::new(Stream::new(plugin.clone(), None))),
            plugin,
        }
    }

    /// Sets time and randomness for a call handling `event` (or none).
    pub fn begin(&self, event: Option<&Event>) {
        self.time
            .base
            .store(event.map_or(0, Event::time_unix_nanos), Ordering::Relaxed);
        self.time.reads.store(0, Ordering::Relaxed);
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *rng = Stream::new(self.plugin.clone(), event.cloned());
    }

    /// The fixed `insecure-seed` of this plugin.
    pub fn insecure_seed(&self) -> u128 {
        let digest = seed(&self.plugin, "insecure-seed");
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        u128::from_le_bytes(bytes)
    }

    pub fn wall_clock(&self) -> impl HostWallClock + 'static {
        WallClock(self.time.clone())
    }

    pub fn monotonic_clock(&self) -> impl HostMonotonicClock + 'static {
        MonotonicClock(self.time.clone())
    }

    pub fn random(&self) -> EventRng {
        EventRng(self.rng.clone())
    }
}

struct WallClock(Arc<VirtualTime>);

impl HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(TICK_NANOS)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.read())
    }
}

struct MonotonicClock(Arc<VirtualTime>);

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        TICK_NANOS
    }

    fn now(&self) -> u64 {
        self.0.read()
    }
}

/// The per-event random stream, as a WASI generator.
pub(crate) struct EventRng(Arc<Mutex<Stream>>);

impl rand_core::TryRng for EventRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).fill(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::TryRng;
    use serde_json::Value;

    #[test]
    fn each_event_gets_its_own_repeatable_stream_and_time() {
        let d = Determinism::new("p".into());
        let e1 = Event::new("a", Value::Null);
        let e2 = Event::new("b", Value::Null);
        let mut rng = d.random();
        let draw = |d: &Determinism, rng: &mut EventRng, e: &Event| {
            d.begin(Some(e));
            let mut b = [0u8; 40];
            rng.try_fill_bytes(&mut b).unwrap();
            b
        };
        let a1 = draw(&d, &mut rng, &e1);
        let b1 = draw(&d, &mut rng, &e2);
        assert_eq!(a1, draw(&d, &mut rng, &e1), "same event, same bytes");
        assert_ne!(a1, b1);
        assert_ne!(a1, draw(&Determinism::new("q".into()), &mut rng, &e1), "per plugin");

        let clock = d.wall_clock();
        d.begin(Some(&e1));
        let t0 = clock.now();
        assert_eq!(t0.as_nanos() as u64, e1.time_unix_nanos());
        assert_eq!((clock.now() - t0).as_nanos() as u64, TICK_NANOS, "reads advance time");
        d.begin(Some(&e1));
        assert_eq!(clock.now(), t0, "and start over for each call");
        assert_eq!(d.insecure_seed(), Determinism::new("p".into()).insecure_seed());
    }
}
