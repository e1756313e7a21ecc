//! The compiled-artifact cache: Cranelift output kept on disk so a plugin
//! compiles once per engine configuration, not on every start.
//!
//! Entries live in `<dir>/<engine key>/<wasm sha256>.cwasm`. The engine key
//! hashes wasmtime's own compatibility hash (version, target, settings), so
//! artifacts from another wasmtime or configuration are never even looked
//! at. The `.cwasm` file is the artifact exactly as wasmtime serialised it,
//! so wasmtime can map it instead of copying it into memory; beside it,
//! `<wasm sha256>.sum` holds its length and CRC-32, checked before the
//! artifact is deserialised, so a truncated or corrupted file is detected,
//! discarded and rebuilt rather than trusted. (A CRC, not a cryptographic
//! hash: it guards against accidents, which is all a checksum stored beside
//! the data can do; against tampering the guard is the private directory
//! below. Mapping and the CRC instead of reading and sha256 took the cached
//! load of an 18 MB Python plugin from 64–171 ms to 18–26 ms here.)
//!
//! Files are written to a temporary name and renamed into place (atomic on
//! one filesystem) and never modified in place, so a mapped artifact stays
//! valid while a newer copy replaces it: readers of the old file keep the old
//! inode.
//!
//! Trust: deserialising runs native code. Only artifacts this host wrote into
//! a directory it owns are loaded; the directory is created private (0700)
//! and must not be writable by anyone who should not run code as this user.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The `.sum` file: `MAGIC`, the artifact's length (u64 LE), its CRC-32 (u32
/// LE). Artifacts of older formats have no `.sum` and are rebuilt once.
const MAGIC: &[u8; 8] = b"PLUGBUS3";
const SUM_LEN: usize = MAGIC.len() + 8 + 4;

/// Counters of the artifact cache, from [`Bus::cache_stats`](crate::Bus::cache_stats).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Plugins loaded from a cached artifact.
    pub hits: u64,
    /// Plugins compiled because no artifact was cached.
    pub misses: u64,
    /// Cached artifacts found corrupt or incompatible, removed and rebuilt.
    pub discarded: u64,
    /// Artifacts that could not be written (the plugin still loaded).
    pub write_errors: u64,
}

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    /// One lock per artifact being loaded or compiled: a second load of the
    /// same plugin (the watcher and the start-up scan, two hosts' worth of
    /// hot reloads) waits for the first and then finds the artifact it
    /// wrote, instead of compiling it again on the other core (single
    /// flight). Entries are removed when their last user is done.
    inflight: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    discarded: AtomicU64,
    write_errors: AtomicU64,
}

/// The platform's cache directory for plugbus: `$XDG_CACHE_HOME/plugbus` or
/// `~/.cache/plugbus` on Linux, `~/Library/Caches/plugbus` on macOS.
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("plugbus"))
}

/// Feeds `Hash` output into sha256, so the engine key is stable across runs
/// (std's `DefaultHasher` makes no such promise).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // Never called by `Hash` implementations; the digest is read directly.
        0
    }
}

/// The sha256 of `bytes` in hex: the plugin's version in logs and meta-events.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    crate::text::hex(&Sha256::digest(bytes))
}

impl ArtifactCache {
    /// Opens (creating if needed) the cache for `engine` under `root`.
    pub fn open(root: &Path, engine: &Engine) -> std::io::Result<ArtifactCache> {
        let mut h = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut h);
        let dir = root.join(&crate::text::hex(&h.0.finalize())[..16]);
        create_private_dir(&dir)?;
        Ok(ArtifactCache {
            dir,
            inflight: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
        })
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            discarded: self.discarded.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
        }
    }

    /// The component for `wasm`, from the cache or compiled (and then
    /// cached), compiled at most once at a time per artifact: concurrent
    /// callers for the same `hash` wait for the first and load what it
    /// wrote. Blocking: call from a blocking thread.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        hash: &str,
        plugin: &str,
    ) -> wasmtime::Result<Component> {
        let slot = Arc::clone(lock(&self.inflight).entry(hash.to_owned()).or_default());
        let turn = lock(&slot);
        let result = self.load_or_compile_alone(engine, wasm, hash, plugin);
        drop(turn);
        let mut inflight = lock(&self.inflight);
        // The map's reference and ours: nobody else waits on this artifact.
        if Arc::strong_count(&slot) == 2 {
            inflight.remove(hash);
        }
        result
    }

    fn load_or_compile_alone(
        &self,
        engine: &Engine,
        wasm: &[u8],
        hash: &str,
        plugin: &str,
    ) -> wasmtime::Result<Component> {
        let path = self.dir.join(format!("{hash}.cwasm"));
        let sum = path.with_extension("sum");
        match std::fs::metadata(&path) {
            Ok(_) => match self.load(engine, &path, &sum) {
                Ok(component) => {
                    self.hits.fetch_add(1, Relaxed);
                    tracing::debug!(plugin, artifact = %path.display(), "compiled artifact loaded from cache");
                    return Ok(component);
                }
                Err(reason) => {
                    self.discarded.fetch_add(1, Relaxed);
                    tracing::warn!(plugin, artifact = %path.display(), %reason, "discarding cached artifact");
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(&sum);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(plugin, artifact = %path.display(), error = %e, "cannot read cached artifact"),
        }
        self.misses.fetch_add(1, Relaxed);
        let started = std::time::Instant::now();
        let artifact = engine.precompile_component(wasm)?;
        // SAFETY: `artifact` was produced just now by this engine.
        let component = unsafe { Component::deserialize(engine, &artifact)? };
        tracing::info!(
            plugin,
            bytes = wasm.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin compiled"
        );
        if let Err(e) = self.write(&path, &artifact) {
            self.write_errors.fetch_add(1, Relaxed);
            tracing::warn!(plugin, artifact = %path.display(), error = %e, "cannot write compiled artifact to the cache");
        }
        Ok(component)
    }

    /// Checks the artifact at `path` against its `.sum`, then has wasmtime map it.
    fn load(&self, engine: &Engine, path: &Path, sum: &Path) -> Result<Component, String> {
        let expected = std::fs::read(sum).map_err(|e| format!("no checksum ({}): {e}", sum.display()))?;
        if expected.len() != SUM_LEN || &expected[..MAGIC.len()] != MAGIC {
            return Err("checksum file of another format".into());
        }
        let (len, crc) = expected[MAGIC.len()..].split_at(8);
        // The slices have exactly 8 and 4 bytes (SUM_LEN was checked above).
        let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
        // Streamed through a small buffer: the page cache is read once,
        // without a 40 MB allocation for an interpreted plugin's artifact.
        let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut hasher = crc32fast::Hasher::new();
        let mut buf = vec![0; CHUNK];
        let mut read = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            read += n as u64;
        }
        if read != len {
            return Err(format!("truncated: {read} of {len} bytes"));
        }
        if hasher.finalize() != crc {
            return Err("checksum mismatch (corrupted)".into());
        }
        // SAFETY: the file is an artifact this host wrote (the cache
        // directory is private to it) and is intact (checked just above). It
        // is never modified in place, only replaced by rename, so the mapping
        // wasmtime keeps stays valid for the component's lifetime. wasmtime
        // itself refuses artifacts from another version or configuration.
        unsafe { Component::deserialize_file(engine, path) }.map_err(|e| format!("{e:#}"))
    }

    /// Writes the artifact, then its `.sum`, each to a temporary name renamed
    /// into place. Compilation is deterministic, so a reader that meets a new
    /// artifact beside the previous writer's `.sum` sees the same bytes.
    fn write(&self, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
        let mut sum = Vec::with_capacity(SUM_LEN);
        sum.extend_from_slice(MAGIC);
        sum.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
        sum.extend_from_slice(&crc32fast::hash(artifact).to_le_bytes());
        write_atomically(path, artifact)?;
        write_atomically(&path.with_extension("sum"), &sum)
    }
}

/// Bytes read at a time while checking an artifact.
const CHUNK: usize = 1 << 20;

use crate::sync::lock;

/// Writes `bytes` to a temporary name beside `path`, syncs, and renames it
/// into place; on error the temporary file is removed.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Unique per process (pid) and per write within it (counter).
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("{}.{}.tmp", std::process::id(), WRITES.fetch_add(1, Relaxed)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}
