"""CloudEvents posted with the real CloudEvents SDK (PyPI `cloudevents`) to a
real `plugbus serve`: structured and binary mode, and a refusal naming the
attribute. The audit-log plugin writes down what the bus made of them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cloudevents.v1.conversion import to_binary, to_structured
from cloudevents.v1.http import CloudEvent

from conftest import serve_plugbus


@pytest.fixture
def server(plugin_dir: Callable[..., Path], cache_dir: str) -> Iterator[tuple[str, Path]]:
    """`plugbus serve` on a free loopback port: (base URL, the audit file)."""
    plugins = plugin_dir("audit-log")
    for url in serve_plugbus(plugins, "--cache-dir", cache_dir):
        yield url, plugins / "audit" / "events.jsonl"


def post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url + "/events", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def audited(path: Path, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 20
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)


def test_the_cloudevents_sdk_posts_structured_and_binary_events(server: tuple[str, Path]) -> None:
    url, audit = server
    attributes = {
        "type": "tool.called",
        "source": "/agents/researcher",
        "id": "ce-structured-1",
        "time": "2026-12-02T01:00:00+01:00",
        "correlationid": "run-7",
    }
    headers, body = to_structured(CloudEvent(attributes, {"tool": "web_search"}))
    status, answer = post(url, dict(headers), body)
    assert status == 202, answer
    assert answer["ids"] == ["ce-structured-1"]

    attributes = {**attributes, "id": "ce-binary-1", "type": "model_responded", "datacontenttype": "application/json"}
    headers, body = to_binary(CloudEvent(attributes, {"usage": {"prompt_tokens": 5}}))
    status, answer = post(url, dict(headers), body)
    assert status == 202, answer

    first, second = audited(audit, 2)
    assert first["name"] == "tool.called"
    assert first["id"] == "ce-structured-1"
    assert first["source"] == "/agents/researcher"
    assert first["correlation_id"] == "run-7"
    assert first["payload"] == {"tool": "web_search"}
    assert first["time_unix_nanos"] == 1_796_169_600_000_000_000
    assert (second["name"], second["id"]) == ("model_responded", "ce-binary-1")
    assert second["payload"] == {"usage": {"prompt_tokens": 5}}


def test_an_invalid_cloudevent_is_refused_naming_the_attribute(server: tuple[str, Path]) -> None:
    url, _ = server
    headers, body = to_structured(CloudEvent({"type": "a..b", "source": "/x"}, {}))
    status, answer = post(url, dict(headers), body)
    assert status == 400
    assert "`type`" in str(answer["error"]), answer
