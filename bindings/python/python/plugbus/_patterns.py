"""Event-name patterns with agent-event-bus's rules (not the Rust bus's).

Dot-separated segments; `*` matches exactly one segment (so `*` alone
matches one-segment names only, unlike plugbus's Rust bus where it is the
firehose); `**` matches one or more trailing segments and is allowed only as
the last segment (`**` alone is the firehose; `llm.**` does not match
`llm`). Any other text, `*` inside a segment included, is literal.
"""

from __future__ import annotations

from functools import lru_cache


def validate(pattern: object) -> None:
    """Raise `ValueError` naming the problem if `pattern` is not a pattern."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("pattern must be a non-empty string")
    segments = pattern.split(".")
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if not segment:
            raise ValueError(f"pattern has an empty segment: {pattern!r}")
        if segment == "**" and i != last:
            raise ValueError(f"`**` is only allowed as the last segment: {pattern!r}")


@lru_cache(maxsize=4096)
def matches(pattern: str, name: str) -> bool:
    """Whether event name `name` matches `pattern` (assumed valid).

    Cached: an agent emits a handful of names against a handful of
    patterns, so each pair is worked out once.
    """
    if pattern == name:
        return True
    want = pattern.split(".")
    have = name.split(".")
    if want[-1] == "**":
        head = want[:-1]
        # `**` consumes at least one segment.
        if len(have) <= len(head):
            return False
    else:
        head = want
        if len(have) != len(head):
            return False
    return all(w == "*" or w == h for w, h in zip(head, have))
