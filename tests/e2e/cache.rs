//! The compiled-artifact cache: a second load is served from it, and a
//! corrupted or foreign entry is detected, discarded and rebuilt.

use crate::support;

use plugbus::{Bus, CacheStats, Outcome};
use serde_json::json;
use support::plugin_dir;

async fn load(plugins: &std::path::Path, cache: &std::path::Path) -> Bus {
    Bus::builder()
        .plugin_dir(plugins)
        .cache_dir(cache)
        .build()
        .await
        .unwrap()
}

/// The cached artifacts (`.cwasm`; each has a `.sum` beside it).
fn entries(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for engine_dir in std::fs::read_dir(cache).unwrap() {
        for f in std::fs::read_dir(engine_dir.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "cwasm") {
                assert!(path.with_extension("sum").is_file(), "{} has no .sum", path.display());
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn second_load_is_served_from_the_cache() {
    let plugins = plugin_dir(&["console-logger", "misbehave"]);
    let cache = tempfile::tempdir().unwrap();
    let bus = load(plugins.path(), cache.path()).await;
    assert_eq!(
        bus.cache_stats().unwrap(),
        CacheStats {
            misses: 2,
            ..Default::default()
        }
    );
    bus.shutdown().await;
    assert_eq!(entries(cache.path()).len(), 2);
    assert!(
        entries(cache.path()).iter().all(|p| p.extension().unwrap() == "cwasm"),
        "no temp files left"
    );

    let bus = load(plugins.path(), cache.path()).await;
    assert_eq!(
        bus.cache_stats().unwrap(),
        CacheStats {
            hits: 2,
            ..Default::default()
        }
    );
    // A cached plugin behaves exactly like a freshly compiled one, traps included.
    let report = bus.emit_and_wait("misbehave.spin", json!({})).await;
    assert_eq!(
        report.outcome("misbehave"),
        Some(&Outcome::Failed(plugbus::Failure::OutOfFuel))
    );
    assert_eq!(report.outcome("console-logger"), Some(&Outcome::Ok));
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
}

#[tokio::test]
async fn corrupted_entries_are_discarded_and_rebuilt() {
    let plugins = plugin_dir(&["console-logger", "misbehave", "cost-tracker", "token-counter"]);
    let cache = tempfile::tempdir().unwrap();
    load(plugins.path(), cache.path()).await.shutdown().await;
    let files = entries(cache.path());
    assert_eq!(files.len(), 4);
    // One flipped byte deep in the code, one truncated file, one replaced by
    // garbage, one whose checksum file is gone.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&files[0], bytes).unwrap();
    let bytes = std::fs::read(&files[1]).unwrap();
    std::fs::write(&files[1], &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(&files[2], b"not an artifact").unwrap();
    std::fs::remove_file(files[3].with_extension("sum")).unwrap();

    let bus = load(plugins.path(), cache.path()).await;
    assert_eq!(
        bus.cache_stats().unwrap(),
        CacheStats {
            misses: 4,
            discarded: 4,
            ..Default::default()
        }
    );
    assert_eq!(bus.plugins().len(), 4, "{:?}", bus.load_failures());
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
    bus.shutdown().await;

    let bus = load(plugins.path(), cache.path()).await;
    assert_eq!(
        bus.cache_stats().unwrap(),
        CacheStats {
            hits: 4,
            ..Default::default()
        },
        "rebuilt entries are reused"
    );
}

#[tokio::test]
async fn an_unwritable_cache_never_stops_a_plugin_loading() {
    let plugins = plugin_dir(&["console-logger"]);
    let file = tempfile::NamedTempFile::new().unwrap();
    // A regular file where the cache directory should be.
    let bus = load(plugins.path(), file.path()).await;
    assert!(bus.cache_stats().is_none(), "cache disabled, with a warning");
    assert_eq!(bus.plugins().len(), 1);
    let bus = Bus::builder()
        .plugin_dir(plugins.path())
        .no_cache()
        .build()
        .await
        .unwrap();
    assert!(bus.cache_stats().is_none());
    assert_eq!(bus.plugins()[0].version.len(), 64, "sha256 hex version");
}

/// Single flight: two loads of the same plugin at once on a cold cache (the
/// watcher and the start-up scan, say) compile it once; the second waits
/// and loads the artifact the first wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_one_plugin_compile_it_once() {
    let cache = tempfile::tempdir().unwrap();
    let bus = Bus::builder().cache_dir(cache.path()).build().await.unwrap();
    let wasm = support::wasm("token-counter");
    let (a, b) = tokio::join!(bus.check_plugin(&wasm), bus.check_plugin(&wasm));
    assert_eq!(a.unwrap().version, b.unwrap().version);
    let stats = bus.cache_stats().unwrap();
    assert_eq!((stats.misses, stats.hits), (1, 1), "{stats:?}");
    bus.shutdown().await;
}
