//! Event names and subscription patterns.
//!
//! Names are dot-separated segments (`model_responded`, `agent.tool_called`).
//! A pattern matches a name when it equals it, when it is `*` or `**` alone
//! (every event), or segment by segment, where `*` matches exactly one segment
//! and a final `**` matches one or more. Patterns are parsed once, when a
//! handler subscribes; matching never allocates.

use std::fmt;

/// Why a pattern or an event name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern or name is the empty string.
    #[error("`{0}` is empty")]
    Empty(String),
    /// Two dots in a row, or a dot at either end.
    #[error("`{0}` has an empty segment")]
    EmptySegment(String),
    /// `**` may only stand as the last segment.
    #[error("`{0}`: `**` is only allowed as the last segment")]
    MisplacedDoubleStar(String),
    /// A `*` mixed with other characters inside one segment, like `llm*`.
    #[error("`{0}`: `*` must be a whole segment")]
    PartialWildcard(String),
    /// Event names are concrete: no wildcards.
    #[error("`{0}` is not a valid event name: it contains a wildcard")]
    WildcardInName(String),
    /// Names and patterns are capped so a hostile plugin cannot make the host
    /// store or match huge strings.
    #[error("`{0}…` is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
    /// Whitespace and control characters are refused: they make logs and
    /// metrics ambiguous.
    #[error("`{0}` contains whitespace or a control character")]
    BadCharacter(String),
}

/// Longest accepted name or pattern, in bytes. Generous for real names
/// (`agent.tool.web_search.completed` is 31) while bounding what a plugin can
/// make the host keep.
pub const MAX_NAME_LEN: usize = 256;

/// A compiled subscription pattern.
///
/// ```
/// use plugbus::Pattern;
/// let p = Pattern::parse("llm.*").unwrap();
/// assert!(p.matches("llm.call"));
/// assert!(!p.matches("llm.call.start"));
/// assert!(Pattern::parse("llm.**").unwrap().matches("llm.call.start"));
/// assert!(Pattern::parse("a..b").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    raw: String,
    kind: Kind,
}

#[derive(Clone, PartialEq, Eq)]
enum Kind {
    /// `*` or `**` alone.
    All,
    /// No wildcard: plain equality (and eligible for the exact-name index).
    Exact,
    /// Segment by segment; `tail` is true when the pattern ends in `**`.
    Segments { segments: Vec<Segment>, tail: bool },
}

#[derive(Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
}

impl Pattern {
    /// Parses and validates a pattern.
    ///
    /// # Errors
    /// [`PatternError`] when the pattern is empty, has an empty segment, uses
    /// `**` anywhere but last, or mixes `*` with other characters in a segment.
    pub fn parse(raw: &str) -> Result<Pattern, PatternError> {
        check_text(raw)?;
        if raw == "*" || raw == "**" {
            return Ok(Pattern {
                raw: raw.to_owned(),
                kind: Kind::All,
            });
        }
        let parts: Vec<&str> = raw.split('.').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        let mut tail = false;
        for (i, part) in parts.iter().enumerate() {
            match *part {
                "" => return Err(PatternError::EmptySegment(raw.to_owned())),
                "**" if i == last => tail = true,
                "**" => return Err(PatternError::MisplacedDoubleStar(raw.to_owned())),
                "*" => segments.push(Segment::Any),
                p if p.contains('*') => return Err(PatternError::PartialWildcard(raw.to_owned())),
                p => segments.push(Segment::Literal(p.to_owned())),
            }
        }
        let kind = if !tail && segments.iter().all(|s| matches!(s, Segment::Literal(_))) {
            Kind::Exact
        } else {
            Kind::Segments { segments, tail }
        };
        Ok(Pattern {
            raw: raw.to_owned(),
            kind,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True when the pattern has no wildcard and matches exactly one name.
    pub fn is_exact(&self) -> bool {
        matches!(self.kind, Kind::Exact)
    }

    /// Does this pattern match the event name?
    pub fn matches(&self, name: &str) -> bool {
        match &self.kind {
            Kind::All => true,
            Kind::Exact => self.raw == name,
            Kind::Segments { segments, tail } => {
                let mut parts = name.split('.');
                for segment in segments {
                    match (segment, parts.next()) {
                        (_, None) => return false,
                        (Segment::Any, Some(_)) => {}
                        (Segment::Literal(lit), Some(part)) if lit == part => {}
                        (Segment::Literal(_), Some(_)) => return false,
                    }
                }
                // `**` needs at least one more segment; otherwise nothing may remain.
                let rest = parts.next().is_some();
                rest == *tail
            }
        }
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.raw)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Checks that `name` is a valid concrete event name: non-empty segments, no
/// wildcard, no whitespace, at most [`MAX_NAME_LEN`] bytes.
///
/// # Errors
/// The [`PatternError`] saying what is wrong with the name.
///
/// ```
/// assert!(plugbus::validate_event_name("agent.tool_called").is_ok());
/// assert!(plugbus::validate_event_name("agent.*").is_err());
/// ```
pub fn validate_event_name(name: &str) -> Result<(), PatternError> {
    check_text(name)?;
    if name.contains('*') {
        return Err(PatternError::WildcardInName(name.to_owned()));
    }
    if name.split('.').any(str::is_empty) {
        return Err(PatternError::EmptySegment(name.to_owned()));
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), PatternError> {
    if text.is_empty() {
        return Err(PatternError::Empty(String::new()));
    }
    if text.len() > MAX_NAME_LEN {
        let cut = (0..=64).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        return Err(PatternError::TooLong(text[..cut].to_owned()));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PatternError::BadCharacter(text.escape_debug().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Pattern::parse(p).unwrap().matches(n)
    }

    #[test]
    fn exact_names() {
        assert!(m("model_responded", "model_responded"));
        assert!(!m("model_responded", "model_responded.x"));
        assert!(!m("llm.call", "llm"));
        assert!(Pattern::parse("llm.call").unwrap().is_exact());
    }

    #[test]
    fn star_and_double_star_alone_match_everything() {
        for p in ["*", "**"] {
            assert!(m(p, "a"));
            assert!(m(p, "a.b.c"));
        }
    }

    #[test]
    fn single_star_matches_exactly_one_segment() {
        assert!(m("llm.*", "llm.call"));
        assert!(!m("llm.*", "llm.call.start"));
        assert!(!m("llm.*", "llm"));
        assert!(m("llm.*.start", "llm.tool.start"));
        assert!(!m("llm.*.start", "llm.tool.stop"));
        assert!(!m("llm.*.start", "llm.start"));
        assert!(m("*.start", "tool.start"));
        assert!(!m("*.start", "a.tool.start"));
    }

    #[test]
    fn trailing_double_star_matches_one_or_more() {
        assert!(m("llm.**", "llm.call"));
        assert!(m("llm.**", "llm.call.start"));
        assert!(!m("llm.**", "llm"));
        assert!(!m("llm.**", "other.call"));
        assert!(m("a.*.**", "a.b.c"));
        assert!(!m("a.*.**", "a.b"));
    }

    #[test]
    fn invalid_patterns_are_refused_with_a_reason() {
        assert!(matches!(Pattern::parse(""), Err(PatternError::Empty(_))));
        assert!(matches!(Pattern::parse("a..b"), Err(PatternError::EmptySegment(_))));
        assert!(matches!(Pattern::parse("a."), Err(PatternError::EmptySegment(_))));
        assert!(matches!(Pattern::parse(".a"), Err(PatternError::EmptySegment(_))));
        assert!(matches!(
            Pattern::parse("**.a"),
            Err(PatternError::MisplacedDoubleStar(_))
        ));
        assert!(matches!(
            Pattern::parse("a.**.b"),
            Err(PatternError::MisplacedDoubleStar(_))
        ));
        assert!(matches!(Pattern::parse("llm*"), Err(PatternError::PartialWildcard(_))));
        assert!(matches!(Pattern::parse("a b"), Err(PatternError::BadCharacter(_))));
        assert!(matches!(
            Pattern::parse(&"x".repeat(300)),
            Err(PatternError::TooLong(_))
        ));
        let msg = Pattern::parse("a..b").unwrap_err().to_string();
        assert!(msg.contains("a..b"), "{msg}");
    }

    #[test]
    fn event_names_are_validated() {
        assert!(validate_event_name("agent.tool_called").is_ok());
        assert!(validate_event_name("budget_exceeded").is_ok());
        assert!(validate_event_name("").is_err());
        assert!(validate_event_name("a.*").is_err());
        assert!(validate_event_name("a..b").is_err());
        assert!(validate_event_name("a\nb").is_err());
    }
}
