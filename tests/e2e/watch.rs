//! Hot reload against a real directory: add, replace, corrupt replacement,
//! remove, slow partial write, manifest change. Timing is tolerated by
//! polling with a deadline; nothing asserts on how fast a change lands.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use plugbus::{Bus, Outcome, PluginInfo};
use serde_json::json;
use support::{Recorder, plugin_dir, until, wasm};

fn plugin(bus: &Bus, name: &str) -> Option<PluginInfo> {
    bus.plugins().into_iter().find(|p| p.name == name)
}

/// Installs `src` as `dir/name.wasm` the recommended way: write elsewhere
/// in the same directory (a hidden name), then rename into place.
fn install(src: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.wasm.tmp"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

async fn watched(dir: &Path) -> (Bus, Recorder) {
    let bus = Bus::builder()
        .plugin_dir(dir)
        .watch(true)
        .history(100_000)
        .build()
        .await
        .unwrap();
    let meta = Recorder::attach(&bus, "plugbus.plugin.*");
    (bus, meta)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_plugins_load_and_removed_ones_unload() {
    let dir = plugin_dir(&["console-logger"]);
    let (bus, meta) = watched(dir.path()).await;
    install(&wasm("misbehave"), dir.path(), "misbehave");
    let info = until("misbehave loaded", || plugin(&bus, "misbehave")).await;
    assert_eq!(info.subscriptions, ["misbehave.*"]);
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
    let loaded = until("loaded meta-event", || meta.named("plugbus.plugin.loaded").pop()).await;
    assert_eq!(loaded.payload()["name"], "misbehave");
    assert_eq!(loaded.payload()["version"], info.version.as_str());

    std::fs::remove_file(dir.path().join("misbehave.wasm")).unwrap();
    until("misbehave unloaded", || {
        plugin(&bus, "misbehave").is_none().then_some(())
    })
    .await;
    until("unloaded meta-event", || meta.named("plugbus.plugin.unloaded").pop()).await;
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("misbehave"), None);
    assert_eq!(report.outcome("console-logger"), Some(&Outcome::Ok));
    bus.shutdown().await;
}

/// An entry added at run time that is no plugin file (a directory, a
/// dangling link) fails its load naming itself, as it does at start,
/// instead of passing for a removal without a word; removing it clears it.
/// The directory removed (or moved away) and made again: its plugins
/// unload, and the new directory is watched and read. The watch once died
/// with the directory, without a word: nothing put back was ever loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_directory_removed_and_made_again_is_watched_again() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(wasm("console-logger"), dir.join("console-logger.wasm")).unwrap();
    let (bus, _meta) = watched(&dir).await;
    assert!(plugin(&bus, "console-logger").is_some());

    // Moved away: unloaded, and changes in its new place are not taken.
    let away = parent.path().join("away");
    std::fs::rename(&dir, &away).unwrap();
    until("unloaded with its directory", || {
        plugin(&bus, "console-logger").is_none().then_some(())
    })
    .await;
    std::fs::remove_dir_all(&away).unwrap();

    std::fs::create_dir(&dir).unwrap();
    install(&wasm("misbehave"), &dir, "misbehave");
    until("the new directory's plugin loaded", || plugin(&bus, "misbehave")).await;
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
    // And it is watched: a later change is seen as usual.
    install(&wasm("console-logger"), &dir, "console-logger");
    until("a later plugin loaded", || plugin(&bus, "console-logger")).await;
    bus.shutdown().await;
}

/// Changes to different plugins are applied side by side: a slow one (a
/// Python plugin compiling on a cold cache, seconds) holds up no other.
/// They were applied one after another, so a plugin replaced meanwhile
/// waited for that compile (26.8 s in the sweep that found it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_plugin_change_holds_up_no_other() {
    let dir = plugin_dir(&[]);
    let cold = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .watch(true)
        .cache_dir(cold.path())
        .build()
        .await
        .unwrap();
    install(&wasm("tokens-py"), dir.path(), "slow");
    // Past the debounce (250 ms) and settle (100 ms) times: its compile runs.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    install(&wasm("misbehave"), dir.path(), "fast");
    until("the fast plugin loaded", || plugin(&bus, "fast")).await;
    assert!(
        plugin(&bus, "slow").is_none(),
        "the fast plugin waited for the slow one's compile"
    );
    // Shutting down waits for the compile in progress.
    bus.shutdown().await;
}

/// Kubernetes mounts a ConfigMap as links through `..data`, and an update
/// swaps `..data` in one rename: no event names a plugin file. The
/// directory is read again and the changed plugin reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_style_atomic_update_of_links_reloads_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v1 = d.join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::copy(wasm("console-logger"), v1.join("obs.wasm")).unwrap();
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/obs.wasm", d.join("obs.wasm")).unwrap();
    let (bus, _meta) = watched(d).await;
    let before = plugin(&bus, "obs").expect("loaded through the links").version;

    let v2 = d.join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::copy(wasm("misbehave"), v2.join("obs.wasm")).unwrap();
    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    let after = until("reloaded through the swapped links", || {
        plugin(&bus, "obs").filter(|p| p.version != before)
    })
    .await;
    assert_eq!(after.subscriptions, ["misbehave.*"]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_entry_that_is_no_plugin_file_is_a_load_failure() {
    let dir = plugin_dir(&["console-logger"]);
    let (bus, _meta) = watched(dir.path()).await;
    let odd = dir.path().join("odd.wasm");
    let dangling = dir.path().join("dangling.wasm");
    std::fs::create_dir(&odd).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.wasm"), &dangling).unwrap();
    let mut failures = until("both listed as load failures", || {
        let failures = bus.load_failures();
        (failures.len() == 2).then_some(failures)
    })
    .await;
    failures.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(failures[0].path, dangling);
    assert_eq!(failures[1].path, odd);
    assert!(failures[1].reason.contains("a directory"), "{}", failures[1].reason);
    std::fs::remove_dir(&odd).unwrap();
    std::fs::remove_file(&dangling).unwrap();
    until("the failures cleared", || bus.load_failures().is_empty().then_some(())).await;
    assert!(plugin(&bus, "console-logger").is_some());
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_swaps_without_losing_or_repeating_an_event() {
    let dir = plugin_dir(&["misbehave"]);
    let (bus, meta) = watched(dir.path()).await;
    let v1 = plugin(&bus, "misbehave").unwrap();
    let counts = Recorder::attach(&bus, "fixture.count");

    // Publish steadily while the file is replaced by a different program
    // under the same name (console-logger's code: it subscribes to `*` and
    // never emits `fixture.count`), and for a while after the swap.
    let swapped = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (bus, swapped) = (bus.clone(), swapped.clone());
        tokio::spawn(async move {
            let (mut sent, mut after_swap) = (0u64, 0u64);
            while after_swap < 100 {
                bus.emit("misbehave.count", json!({ "seq": sent }));
                sent += 1;
                if swapped.load(Ordering::SeqCst) {
                    after_swap += 1;
                }
                if sent.is_multiple_of(20) {
                    bus.flush().await; // stay well below the queue capacity
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    install(&wasm("console-logger"), dir.path(), "misbehave");
    let v2 = until("misbehave replaced", || {
        plugin(&bus, "misbehave").filter(|p| p.version != v1.version)
    })
    .await;
    swapped.store(true, Ordering::SeqCst);
    let sent = publisher.await.unwrap();
    bus.flush().await;

    assert_eq!(v2.subscriptions, ["*"], "the new version's subscriptions apply");
    let stats = plugin(&bus, "misbehave").unwrap().stats;
    // Every event of the stream was delivered exactly once, to one version
    // or the other; the counters carried over the swap.
    let handled_by_v1 = counts.events().len() as u64;
    assert!(handled_by_v1 > 0, "v1 handled the early events");
    let stream: u64 = sent;
    assert_eq!(stats.dropped, 0);
    assert!(
        stats.delivered >= stream,
        "delivered {} < sent {stream}",
        stats.delivered
    );
    // v2 also sees every other event (`*`): fixture.count follow-ups emitted
    // by v1 before the swap, and the meta-events after it.
    let v2_extra = bus
        .history(100_000)
        .iter()
        .filter(|e| e.name() != "misbehave.count")
        .count() as u64;
    assert!(stats.delivered <= stream + v2_extra);
    // v1 emitted exactly one follow-up per event it handled, with a strictly
    // increasing sequence: no event was handled twice.
    let seen: Vec<u64> = counts
        .events()
        .iter()
        .map(|e| e.payload()["seen"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, (1..=handled_by_v1).collect::<Vec<_>>());
    assert!(handled_by_v1 < stream, "v2 handled the later events");
    until("reloaded meta-event", || meta.named("plugbus.plugin.reloaded").pop()).await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_replacement_keeps_the_old_version_running() {
    let dir = plugin_dir(&["misbehave"]);
    let (bus, meta) = watched(dir.path()).await;
    let v1 = plugin(&bus, "misbehave").unwrap();
    std::fs::write(dir.path().join("misbehave.wasm"), b"\0asm garbage, not a component").unwrap();
    let failed = until("load_failed meta-event", || {
        meta.named("plugbus.plugin.load_failed").pop()
    })
    .await;
    assert!(
        failed.payload()["reason"]
            .as_str()
            .unwrap()
            .contains("invalid component"),
        "{failed:?}"
    );
    let info = plugin(&bus, "misbehave").unwrap();
    assert_eq!(info.version, v1.version, "the old version keeps running");
    let err = info.reload_error.expect("plugins() shows the failed reload");
    assert!(err.contains("misbehave.wasm"), "{err}");
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));

    // A wrong-world component is refused the same way.
    install(&wasm("wrong-world"), dir.path(), "misbehave");
    until("second load_failed", || {
        (meta.named("plugbus.plugin.load_failed").len() >= 2).then_some(())
    })
    .await;
    assert_eq!(plugin(&bus, "misbehave").unwrap().version, v1.version);

    // Putting a good file back clears the error, and the load failure: the
    // file is the running version's again (its reload is `Unchanged`).
    assert_eq!(bus.load_failures().len(), 1, "{:?}", bus.load_failures());
    install(&wasm("misbehave"), dir.path(), "misbehave");
    until("reload error cleared", || {
        plugin(&bus, "misbehave").filter(|p| p.reload_error.is_none())
    })
    .await;
    until("load failure cleared", || bus.load_failures().is_empty().then_some(())).await;
    bus.shutdown().await;
}

/// The watcher acts on changes to the plugin's files, not on the host's own
/// reads of them: every load reads the `.wasm` (and its manifest), and
/// inotify reports those opens and reads. Acting on them reloaded a plugin
/// ~3 times a second forever after a hot reload, and reported a refused file
/// every ~350 ms forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_acted_on_once_and_the_hosts_own_reads_are_not_changes() {
    let dir = plugin_dir(&["misbehave"]);
    let cache = tempfile::tempdir().unwrap();
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .watch(true)
        .cache_dir(cache.path())
        .build()
        .await
        .unwrap();
    let meta = Recorder::attach(&bus, "plugbus.plugin.*");
    // Every load, the unchanged reloads included, goes through the cache.
    let loads = || bus.cache_stats().map(|s| s.hits + s.misses).unwrap();
    let quiet = Duration::from_secs(2);

    install(&wasm("console-logger"), dir.path(), "misbehave");
    until("reloaded", || meta.named("plugbus.plugin.reloaded").pop()).await;
    // Let the reload's own burst of events settle (the debounce), then count.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after_reload = loads();
    tokio::time::sleep(quiet).await;
    assert_eq!(loads(), after_reload, "the plugin was loaded again with no change");
    assert_eq!(meta.named("plugbus.plugin.reloaded").len(), 1);

    // A refused replacement is reported once, not once per look at it.
    std::fs::write(dir.path().join("misbehave.wasm"), b"\0asm garbage, not a component").unwrap();
    until("load_failed", || meta.named("plugbus.plugin.load_failed").pop()).await;
    tokio::time::sleep(quiet).await;
    assert_eq!(
        meta.named("plugbus.plugin.load_failed").len(),
        1,
        "{:?}",
        meta.named("plugbus.plugin.load_failed")
    );
    assert_eq!(meta.named("plugbus.plugin.reloaded").len(), 1);

    // The next change to the file is tried (and reported) again.
    std::fs::write(dir.path().join("misbehave.wasm"), b"\0asm other garbage").unwrap();
    until("second load_failed", || {
        (meta.named("plugbus.plugin.load_failed").len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(quiet).await;
    assert_eq!(meta.named("plugbus.plugin.load_failed").len(), 2);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_exact_versions_a_replacement_that_does_not_load_unloads_the_old_one() {
    let dir = plugin_dir(&["misbehave"]);
    let bus = Bus::builder()
        .plugin_dir(dir.path())
        .watch(true)
        .exact_versions(true)
        .build()
        .await
        .unwrap();
    let meta = Recorder::attach(&bus, "plugbus.plugin.*");
    assert!(plugin(&bus, "misbehave").is_some());
    install(&wasm("wrong-world"), dir.path(), "misbehave");
    let unloaded = until("unloaded meta-event", || meta.named("plugbus.plugin.unloaded").pop()).await;
    assert!(unloaded.payload()["reason"].is_string(), "{unloaded:?}");
    assert!(
        plugin(&bus, "misbehave").is_none(),
        "the old version must not keep running"
    );
    assert_eq!(meta.named("plugbus.plugin.load_failed").len(), 1);
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("misbehave"), None);

    // A version that loads brings it back.
    install(&wasm("misbehave"), dir.path(), "misbehave");
    until("loaded again", || plugin(&bus, "misbehave")).await;
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_partial_write_is_not_loaded_half_written() {
    let dir = plugin_dir(&["console-logger"]);
    let (bus, meta) = watched(dir.path()).await;
    let bytes = std::fs::read(wasm("misbehave")).unwrap();
    let target = dir.path().join("misbehave.wasm");
    // First half, then a pause longer than the debounce, then the rest.
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(plugin(&bus, "misbehave").is_none(), "half a component must not load");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&target).unwrap();
        f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    }
    let info = until("misbehave loaded once complete", || plugin(&bus, "misbehave")).await;
    assert_eq!(info.subscriptions, ["misbehave.*"]);
    // The half file was refused along the way; the complete one cleared it.
    assert!(!meta.named("plugbus.plugin.load_failed").is_empty());
    until("load failure cleared", || bus.load_failures().is_empty().then_some(())).await;
    let report = bus.emit_and_wait("misbehave.ok", json!({})).await;
    assert_eq!(report.outcome("misbehave"), Some(&Outcome::Ok));
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_change_reloads_with_new_settings() {
    let dir = plugin_dir(&["misbehave"]);
    let (bus, meta) = watched(dir.path()).await;
    assert_eq!(plugin(&bus, "misbehave").unwrap().subscriptions, ["misbehave.*"]);
    std::fs::write(
        dir.path().join("misbehave.toml"),
        "subscriptions = [\"custom.**\"]\n[limits]\nmemory_mib = 4\n",
    )
    .unwrap();
    until("new subscriptions", || {
        plugin(&bus, "misbehave").filter(|p| p.subscriptions == ["custom.**"])
    })
    .await;
    until("reloaded meta-event", || meta.named("plugbus.plugin.reloaded").pop()).await;
    let report = bus.emit_and_wait("custom.memory", json!({})).await;
    assert_eq!(
        report.outcome("misbehave"),
        Some(&Outcome::Failed(plugbus::Failure::MemoryLimit))
    );
    // A broken manifest keeps the running version.
    std::fs::write(dir.path().join("misbehave.toml"), "[limits]\nbogus = 1\n").unwrap();
    let failed = until("load_failed", || meta.named("plugbus.plugin.load_failed").pop()).await;
    assert!(failed.payload()["reason"].as_str().unwrap().contains("bogus"));
    assert_eq!(plugin(&bus, "misbehave").unwrap().subscriptions, ["custom.**"]);
    bus.shutdown().await;
}

#[tokio::test]
async fn watch_without_a_directory_is_an_error() {
    let err = Bus::builder().watch(true).build().await.expect_err("must fail");
    assert!(matches!(err, plugbus::Error::Watch(_)), "{err}");
}
