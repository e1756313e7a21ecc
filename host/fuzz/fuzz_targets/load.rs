//! Loading a plugin from arbitrary bytes: a clear error (or a plugin), never
//! a panic or a hang.
#![no_main]

use std::sync::OnceLock;

struct Host {
    runtime: tokio::runtime::Runtime,
    bus: plugbus::Bus,
    dir: tempfile::TempDir,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let bus = runtime.block_on(plugbus::Bus::builder().no_cache().build()).unwrap();
        Host { runtime, bus, dir: tempfile::tempdir().unwrap() }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let h = host();
    let path = h.dir.path().join("fuzz.wasm");
    std::fs::write(&path, data).unwrap();
    if let Err(e) = h.runtime.block_on(h.bus.check_plugin(&path)) {
        // Every refusal names the file.
        assert!(e.to_string().contains("fuzz.wasm"), "{e}");
    }
});
