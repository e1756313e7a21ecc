//! The manifest parser and validator: any text gives a manifest or an
//! error naming the field, never a panic. Inputs with directory grants are
//! parsed but not validated (validation resolves them on the filesystem).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(raw) = toml::from_str::<plugbus::manifest::RawManifest>(text) else { return };
    if !raw.dirs.is_empty() {
        return;
    }
    if let Ok(m) = plugbus::Manifest::validate(raw, std::path::Path::new("/nonexistent")) {
        let limits = m.apply_limits(&plugbus::Limits::default());
        assert!(limits.queue_capacity >= 1);
    }
});
