//! JSON Lines ingestion (`plugbus run`, `POST /events`): any input gives an
//! event or an error, never a panic; an accepted event has a valid name.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        if let Ok(event) = plugbus::parse_event_line(line) {
            assert!(plugbus::validate_event_name(event.name()).is_ok());
            // Serialising what was accepted must work too.
            serde_json::to_string(&event).unwrap();
        }
    }
});
