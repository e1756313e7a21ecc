//! The wasmtime engine shared by every plugin of a bus, its linker, and the
//! epoch ticker that enforces wall-clock deadlines.
//!
//! Settings and why:
//! - fuel: bounds the work of one event deterministically;
//! - epoch interruption: bounds its wall-clock time (fuel alone does not see
//!   a slow host or a contended machine);
//! - `concurrency_support(false)`: observers are plain synchronous exports and
//!   the component-model-async machinery makes each call ~2.5x slower;
//! - pooling allocator with copy-on-write memory images: re-instantiating a
//!   plugin after a trap costs microseconds, not a fresh mmap;
//! - NaN canonicalisation: float results carry the same NaN bits on every
//!   run and machine, so replaying events gives byte-identical results (it
//!   changes the generated code, so it is part of wasmtime's compatibility
//!   hash, which keys the artifact cache);
//! - everything else (Cranelift, guard pages, Spectre mitigations) stays at
//!   wasmtime's secure defaults.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::cache::ArtifactCache;
use crate::manifest::MAX_MEMORY_MIB;
use crate::plugin::bindings::{BATCH_HOST_IMPORT, Observer};
use crate::plugin::ctx::PluginCtx;

/// Period of the epoch ticker: the granularity of wall-clock deadlines. One
/// millisecond keeps a 100 ms deadline within 1% while the ticker thread
/// costs nothing measurable.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Plugin instances the pool holds at once (each plugin keeps one). A memory
/// slot reserves address space, not memory: 256 slots of 4 GiB + guard use
/// about 1 TiB of the 128 TiB user address space. Past it, loading fails
/// with a clear error.
const POOL_INSTANCES: u32 = 256;
/// Core instances per plugin: a Rust component has 3–5, an interpreted one
/// (Python, JavaScript) a dozen or more.
const POOL_CORE_INSTANCES: u32 = POOL_INSTANCES * 16;
/// Table slots; interpreted runtimes need large function tables.
const POOL_TABLE_ELEMENTS: usize = 200_000;
/// Bytes of a freed memory slot reset in place (`memset`/copy of the dirty
/// pages, found with the `PAGEMAP_SCAN` ioctl on Linux 6.7+) instead of with
/// `madvise`: a trapped instance's memory is reset without the TLB-shootdown
/// IPIs and page faults that dominated re-instantiation in profiles. A small
/// plugin dirties a few hundred KiB; past this bound the rest is `madvise`d.
/// Costs up to this much resident memory per slot ever used.
const KEEP_RESIDENT_MEMORY: usize = 1 << 20;
/// The same for tables.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;

/// Engine + linker + ticker. Dropping it stops the ticker thread.
pub(crate) struct PluginEngine {
    pub engine: Engine,
    pub linker: Linker<PluginCtx>,
    /// Compiled artifacts on disk; `None` when caching is off or unavailable.
    pub cache: Option<ArtifactCache>,
    _ticker: EpochTicker,
}

impl PluginEngine {
    /// Creates the engine; `cache_root` enables the artifact cache there.
    pub fn new(cache_root: Option<&std::path::Path>) -> wasmtime::Result<PluginEngine> {
        let engine = match Engine::new(&config(true)) {
            Ok(engine) => (engine, true),
            Err(e) => {
                // A pool needs a large address-space reservation, which some
                // sandboxes (ulimit -v) refuse. On-demand allocation works
                // everywhere, just slower to instantiate.
                tracing::warn!(error = %e, "pooling allocator unavailable; allocating instances on demand");
                (Engine::new(&config(false))?, false)
            }
        };
        let (engine, pooled) = engine;
        tracing::debug!(pooled, "wasm engine ready");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        // Its filesystem again, gated: an event handled again changes no
        // granted directory (see `granted_dirs`).
        crate::plugin::granted_dirs::add_to_linker(&mut linker)?;
        // Every plugin may import `wasi:http`; without an `[http]` grant its
        // requests are refused by the hook (an error the guest sees), never
        // a link failure.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        Observer::add_to_linker::<_, HasSelf<_>>(&mut linker, |ctx| ctx)?;
        // By hand, not through bindgen: `begin-event` needs the store (fuel
        // and the epoch deadline), which a generated host trait cannot reach.
        linker
            .instance(BATCH_HOST_IMPORT)?
            .func_wrap("begin-event", |store, (index,): (u32,)| {
                crate::plugin::ctx::begin_event(store, index)
            })?;
        let cache = cache_root.and_then(|root| match ArtifactCache::open(root, &engine) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(dir = %root.display(), error = %e, "compiled-artifact cache unavailable; plugins compile on every load");
                None
            }
        });
        let ticker = EpochTicker::start(engine.clone());
        Ok(PluginEngine {
            engine,
            linker,
            cache,
            _ticker: ticker,
        })
    }
}

fn config(pooling: bool) -> Config {
    let mut config = Config::new();
    config
        .consume_fuel(true)
        .epoch_interruption(true)
        .concurrency_support(false)
        .cranelift_nan_canonicalization(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_CORE_INSTANCES)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_CORE_INSTANCES)
            .total_stacks(POOL_INSTANCES)
            .table_elements(POOL_TABLE_ELEMENTS)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE)
            // Falls back to plain `memset` of the first bytes where the ioctl is missing.
            .pagemap_scan(Enabled::Auto)
            // The per-plugin cap is enforced by the store limiter; the slot
            // only has to be able to hold the largest cap a manifest may ask.
            .max_memory_size((MAX_MEMORY_MIB as usize) << 20);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Increments the engine's epoch every [`EPOCH_TICK`] on a dedicated OS
/// thread (not a tokio task: runtime workers may all be busy running wasm).
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("plugbus-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| tracing::error!(error = %e, "cannot start the epoch ticker; deadlines rely on timers only"))
            .ok();
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{Hash, Hasher};

    fn compat_hash(config: &wasmtime::Config) -> u64 {
        let engine = wasmtime::Engine::new(config).unwrap();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    }

    #[test]
    fn nan_canonicalisation_is_part_of_the_cache_key() {
        let ours = super::config(false);
        let mut without = super::config(false);
        without.cranelift_nan_canonicalization(false);
        assert_ne!(
            compat_hash(&ours),
            compat_hash(&without),
            "an artifact compiled without NaN canonicalisation must not be reused"
        );
    }
}
