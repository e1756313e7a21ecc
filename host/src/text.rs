//! Bounds on text a plugin hands the host.
//!
//! Everything a guest controls and the host keeps, logs, reports or writes
//! to disk is capped: error messages returned from `on-event`, abort
//! messages, log lines, trap descriptions and backtrace frame names (the
//! wasm name section is guest data). Event names and patterns have their
//! own limit ([`MAX_NAME_LEN`](crate::pattern::MAX_NAME_LEN)) and emitted
//! payloads theirs (1 MiB). A truncated text says how much was cut.
//!
//! Also [`printable`]: control characters escaped for printing; and
//! [`hex`]: bytes as lowercase hex, the one rendering of digests and
//! ids the host writes (cache keys, journal and dead-letter keys, OCI
//! digests, OTLP ids).

use std::borrow::Cow;

/// Longest guest-supplied message the host keeps: an error returned by
/// `on-event`, an abort message, a failure description. 4 KiB holds any
/// useful message with its context; a hostile 8 MiB `Err` costs 4 KiB per
/// occurrence in logs and reports instead of 8 MiB.
pub const MAX_GUEST_TEXT: usize = 4096;

/// Longest function name kept per backtrace frame. Demangled Rust names
/// with generics run to a few hundred bytes.
pub(crate) const MAX_FRAME_NAME: usize = 512;

/// `s` cut to at most `max` bytes at a character boundary, with a marker
/// saying how many bytes were cut.
pub(crate) fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return s.into();
    }
    let cut = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}… [{} bytes truncated]", &s[..cut], s.len() - cut).into()
}

/// [`truncate`] to [`MAX_GUEST_TEXT`], for an owned string.
pub(crate) fn cap(s: String) -> String {
    if s.len() <= MAX_GUEST_TEXT {
        return s;
    }
    truncate(&s, MAX_GUEST_TEXT).into_owned()
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`), for text
/// from a file name or a peer that the host prints on a terminal or writes
/// to a line-oriented log: a name holding a newline or an escape sequence
/// must not forge a line or recolour the terminal.
///
/// ```
/// assert_eq!(plugbus::text::printable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
/// assert_eq!(plugbus::text::printable("Bob's plugins"), "Bob's plugins");
/// ```
pub fn printable(s: &str) -> Cow<'_, str> {
    escape_where(s, char::is_control)
}

/// `s` with every control character escaped except line breaks and tabs:
/// for a multi-line message (an error with its context, a TOML parser's
/// caret diagram) that may quote what a user or a plugin wrote. No escape
/// sequence or bell reaches the terminal; the message keeps its lines.
///
/// ```
/// assert_eq!(plugbus::text::printable_lines("a\u{1b}[2J\nb\tc"), "a\\u{1b}[2J\nb\tc");
/// ```
pub fn printable_lines(s: &str) -> Cow<'_, str> {
    escape_where(s, |c| c.is_control() && c != '\n' && c != '\t')
}

/// `s` with each character `escaped` picks written as its Rust escape
/// (`\u{1b}`); borrowed when there is none.
fn escape_where(s: &str, escaped: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(&escaped) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// A path as [`printable`] text: a file name is anyone's choice, and a
/// newline or escape sequence in it must not forge a log line or a
/// terminal's output.
///
/// ```
/// let path = std::path::Path::new("plugins/evil\nname.wasm");
/// assert_eq!(plugbus::text::printable_path(path), "plugins/evil\\nname.wasm");
/// ```
pub fn printable_path(path: &std::path::Path) -> String {
    printable(&path.display().to_string()).into_owned()
}

/// `bytes` as lowercase hex, two digits a byte.
///
/// ```
/// assert_eq!(plugbus::text::hex(&[0x0f, 0xa0]), "0fa0");
/// ```
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(
            truncate("héllo", 2),
            "h… [5 bytes truncated]",
            "é is two bytes: the cut falls before it"
        );
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn cap_bounds_a_hostile_message() {
        let huge = "x".repeat(8 << 20);
        let capped = cap(huge);
        assert!(capped.len() < MAX_GUEST_TEXT + 64, "{}", capped.len());
        assert!(
            capped.ends_with("[8384512 bytes truncated]"),
            "{}",
            &capped[capped.len() - 40..]
        );
    }
}
