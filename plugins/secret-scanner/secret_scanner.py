"""secret-scanner: finds leaked credentials in what tools return and models say.

Scans every string in the payload of `tool.**` events and `model_responded`
events for credential shapes (API keys, tokens, private-key headers) and
email addresses, and emits `security.secret_detected` once per event with the
kinds found and where they were found. The secret itself never leaves the
plugin: not in the follow-up event, not in a log line.

Events mapped from OpenTelemetry GenAI spans (docs/opentelemetry.md) carry the
content attributes (`args`, `result`, `input_messages`, `output_messages`,
`system_instructions`) only when the producer opted in to sending them; they
may be JSON objects and arrays or text, and every string at any depth is
scanned.

Built with componentize-py from the WIT in `wit/`, for the `batch-observer`
world (it also exports `on-events`: the events waiting in its queue come in
one call):
    componentize-py -d wit -w batch-observer componentize secret_scanner -o secret-scanner.wasm

Configuration (the manifest's `[config]`):
    kinds      comma-separated kinds to report (default: all of KINDS)
    max_bytes  strings longer than this are scanned only up to it (default 65536)
"""

import json
import re
from typing import List

from componentize_py_types import Err, Ok, Result
from wit_world import exports
from wit_world.imports import batch_host, host
from wit_world.imports.types import Event, Level

# The credential shapes, most specific first: a string that matches an
# Anthropic key must not also be reported as a generic OpenAI-style key.
KINDS = {
    "anthropic_api_key": re.compile(r"sk-ant-[A-Za-z0-9_\-]{20,}"),
    "openai_api_key": re.compile(r"sk-(?:proj-)?[A-Za-z0-9_\-]{20,}"),
    "aws_access_key_id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "github_token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "slack_token": re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),
    "google_api_key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "jwt": re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    "private_key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "email_address": re.compile(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"),
}

# Literals each shape must contain. `in` on a str runs in C at memchr speed;
# a regex walks the text in the interpreter's regex engine, which under fuel
# metering costs ~2,000 fuel per byte for all the shapes together. Checking
# the literals first makes a clean 64 KiB tool output cost ~1% of that.
LITERALS = {
    "anthropic_api_key": ("sk-ant-",),
    "openai_api_key": ("sk-",),
    "aws_access_key_id": ("AKIA", "ASIA"),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    "slack_token": ("xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-"),
    "google_api_key": ("AIza",),
    "jwt": ("eyJ",),
    "private_key": ("PRIVATE KEY-----",),
    "email_address": ("@",),
}

# Kinds that a broader pattern also matches; the broader one is not reported
# for the same text.
SHADOWS = {"anthropic_api_key": "openai_api_key"}


class Settings:
    """The manifest's configuration, read on the first event.

    Host calls are not available while componentize-py pre-initialises the
    module at build time, so nothing here may run at import.
    """

    def __init__(self) -> None:
        wanted = host.config("kinds")
        names = [k.strip() for k in wanted.split(",")] if wanted else list(KINDS)
        unknown = [k for k in names if k not in KINDS]
        if unknown:
            host.log(Level.WARN, f"ignoring unknown kinds in config: {', '.join(unknown)}")
        self.kinds = {k: KINDS[k] for k in names if k in KINDS}
        self.max_bytes = int(host.config("max_bytes") or "65536")


def strings(value, path):
    """Yields (path, text) for every string inside a JSON value."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")


def scan(text, kinds):
    """The kinds found in one string."""
    found = {
        kind
        for kind, pattern in kinds.items()
        if any(literal in text for literal in LITERALS[kind]) and pattern.search(text)
    }
    for specific, broad in SHADOWS.items():
        if specific in found and broad in found:
            # Report the generic shape only if it also occurs on its own.
            rest = kinds[specific].sub("", text)
            if not kinds[broad].search(rest):
                found.discard(broad)
    return found


class Scanner:
    """The plugin's state and its work on one event (shared by both exports)."""

    def __init__(self) -> None:
        self.settings = None
        self.scanned = 0
        self.detections = 0

    def on_event(self, event: Event) -> None:
        if self.settings is None:
            self.settings = Settings()
        try:
            payload = json.loads(event.payload)
        except ValueError as e:
            raise Err(f"payload of {event.name} is not JSON: {e}")
        self.scanned += 1

        found = {}  # kind -> the places it was found, in payload order
        for path, text in strings(payload, "payload"):
            for kind in scan(text[: self.settings.max_bytes], self.settings.kinds):
                found.setdefault(kind, []).append(path)
        if not found:
            return

        self.detections += 1
        kinds = sorted(found)
        host.log(Level.WARN, f"{event.name} {event.id}: {', '.join(kinds)}")
        detail = {
            "event_id": event.id,
            "event_name": event.name,
            "kinds": kinds,
            "locations": {kind: found[kind] for kind in kinds},
        }
        try:
            host.emit("security.secret_detected", json.dumps(detail))
        except Err as e:
            raise Err(f"could not emit security.secret_detected: {e.value}")


SCANNER = Scanner()


class Handler(exports.Handler):
    def subscriptions(self) -> List[str]:
        return ["tool.**", "model_responded"]

    def on_event(self, event: Event) -> None:
        SCANNER.on_event(event)


class BatchHandler(exports.BatchHandler):
    def on_events(self, events: List[Event]) -> List[Result[None, str]]:
        results: List[Result[None, str]] = []
        for i, event in enumerate(events):
            # Before each event: its emits, logs and budgets are its own.
            batch_host.begin_event(i)
            try:
                SCANNER.on_event(event)
                results.append(Ok(None))
            except Err as e:
                results.append(e)
        return results
