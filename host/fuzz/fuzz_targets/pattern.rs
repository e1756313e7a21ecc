//! The pattern parser and matcher: no panics, and the properties that make
//! routing correct.
#![no_main]

use plugbus::{Pattern, validate_event_name};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, name) = text.split_once('\n').unwrap_or((&text, "a.b.c"));
    let Ok(p) = Pattern::parse(pattern) else { return };
    let _ = p.matches(name);
    if validate_event_name(pattern).is_ok() {
        // A wildcard-free pattern matches exactly itself.
        assert!(p.is_exact() && p.matches(pattern));
    }
    if validate_event_name(name).is_ok() {
        // `*` and `**` alone match every valid name.
        assert!(Pattern::parse("**").unwrap().matches(name));
        // `x.**` never matches `x` itself.
        if name.len() + 3 <= plugbus::pattern::MAX_NAME_LEN {
            assert!(!Pattern::parse(&format!("{name}.**")).unwrap().matches(name));
        }
    }
});
