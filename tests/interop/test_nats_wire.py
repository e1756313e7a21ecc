"""The wire format of docs/scale-out.md, spoken by a plain NATS client
(nats-py) to a real `plugbus serve --nats`: an agent in any language can
publish plugbus events without plugbus, and the subjects and partitions the
host uses are the documented ones.

Needs the `plugbus` binary (PLUGBUS_BIN), the built plugins (PLUGBUS_WASM_DIR)
and Debian's nats-server (`make setup-nats`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PLUGBUS_BIN", ROOT / "target" / "debug" / "plugbus"))
WASM = Path(os.environ.get("PLUGBUS_WASM_DIR", ROOT / "target" / "plugbus-test-wasm"))
CACHE = ROOT / "target" / "plugbus-test-cache"
NATS_SERVER = next((p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).is_file()), None)


def fnv1a(data: bytes) -> int:
    """64-bit FNV-1a, as docs/scale-out.md gives it."""
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def subject(name: str, correlation_id: str, partitions: int = 8) -> str:
    tokens = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    return f"plugbus.events.{fnv1a(correlation_id.encode()) % partitions}.{tokens}"


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    if NATS_SERVER is None:
        pytest.fail("nats-server is not installed: run `make setup-nats`")
    proc = subprocess.Popen(
        [NATS_SERVER, "-a", "127.0.0.1", "-p", "-1", "-js", "-sd", str(tmp_path / "store"),
         "--ports_file_dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    ports = tmp_path / f"nats-server_{proc.pid}.ports"
    deadline = time.monotonic() + 10
    while not ports.is_file() or not ports.read_text().strip():
        assert time.monotonic() < deadline, "nats-server wrote no ports file"
        time.sleep(0.02)
    yield json.loads(ports.read_text())["nats"][0]
    proc.kill()
    proc.wait()


@pytest.fixture
def host(tmp_path: Path, nats_url: str) -> Iterator[str]:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    shutil.copy(WASM / "console-logger.wasm", plugins)
    proc = subprocess.Popen(
        [str(BIN), "serve", "--plugins", str(plugins), "--nats", nats_url, "--cache-dir", str(CACHE),
         "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"},
    )
    assert proc.stderr is not None
    base: str | None = None
    for line in proc.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            base = m.group(1)
        # Plugins load once it listens: start once they are in.
        if base and "plugbus: ready" in line:
            break
    else:
        pytest.fail("plugbus serve exited before it was ready")
    assert base is not None
    yield base
    proc.terminate()
    proc.wait(timeout=15)


def delivered(url: str) -> int:
    with urllib.request.urlopen(url + "/plugins", timeout=10) as answer:
        doc = json.load(answer)
    return int(doc["plugins"][0]["stats"]["delivered"])


def test_an_agent_publishes_with_nats_py_and_the_host_handles_each_event_once(nats_url: str, host: str) -> None:
    async def publish() -> list[bool]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        duplicates = []
        for i in range(200):
            corr = f"run-{i % 5}"
            envelope = {
                "name": "step", "id": str(uuid.uuid4()), "time_unix_nanos": time.time_ns(),
                "correlation_id": corr, "source": "python-agent", "payload": {"i": i},
            }
            ack = await js.publish(subject("step", corr), json.dumps(envelope).encode(),
                                   headers={"Nats-Msg-Id": envelope["id"]})
            duplicates.append(ack.duplicate is True)
            if i == 0:
                # The same id again: the stream answers duplicate and keeps one.
                again = await js.publish(subject("step", corr), json.dumps(envelope).encode(),
                                         headers={"Nats-Msg-Id": envelope["id"]})
                assert again.duplicate is True and again.seq == ack.seq
        await nc.close()
        return duplicates

    assert not any(asyncio.run(publish()))
    deadline = time.monotonic() + 20
    while delivered(host) < 200:
        assert time.monotonic() < deadline, f"delivered {delivered(host)} of 200"
        time.sleep(0.1)
    time.sleep(0.5)
    assert delivered(host) == 200


def test_the_host_publishes_on_the_documented_subjects(nats_url: str, host: str) -> None:
    events = [{"name": "tool.called", "correlation_id": f"run-{i}", "payload": {"i": i}} for i in range(20)]
    body = "".join(json.dumps(e) + "\n" for e in events).encode()
    with urllib.request.urlopen(urllib.request.Request(host + "/events", data=body, method="POST"), timeout=10) as a:
        assert a.status == 202

    async def read() -> list[tuple[str, dict[str, object], str | None]]:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        sub = await js.pull_subscribe("plugbus.events.>", durable=None, stream="PLUGBUS",
                                      config=ConsumerConfig(filter_subject="plugbus.events.>"))
        msgs = await sub.fetch(20, timeout=10)
        out = []
        for m in msgs:
            out.append((m.subject, json.loads(m.data), (m.headers or {}).get("Nats-Msg-Id")))
            await m.ack()
        await nc.close()
        return out

    seen = asyncio.run(read())
    assert len(seen) == 20
    for subj, envelope, msg_id in seen:
        assert subj == subject("tool.called", str(envelope["correlation_id"])), (subj, envelope)
        assert msg_id == envelope["id"]
        assert envelope["name"] == "tool.called" and envelope["source"] == "host"
        assert set(envelope) >= {"name", "id", "time_unix_nanos", "correlation_id", "source", "payload"}


def start_host(plugins: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [str(BIN), "serve", "--plugins", str(plugins), "--nats", url, "--ack-wait-ms", "1000",
         "--cache-dir", str(CACHE), "--listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"},
    )
    assert proc.stderr is not None
    base: str | None = None
    for line in proc.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            base = m.group(1)
        # Plugins load once it listens: start once they are in.
        if base and "plugbus: ready" in line:
            # Keep draining stderr so the host never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, base
    pytest.fail("plugbus serve exited before it was ready")


def test_ten_thousand_events_over_http_and_nats_py_survive_a_host_killed_mid_stream(
    tmp_path: Path, nats_url: str
) -> None:
    plugins = tmp_path / "two-hosts"
    plugins.mkdir()
    shutil.copy(WASM / "console-logger.wasm", plugins)
    (plugins / "console-logger.toml").write_text('subscriptions = ["step"]\n')
    host_a, url_a = start_host(plugins, nats_url)
    host_b, url_b = start_host(plugins, nats_url)
    ids: set[str] = set()

    def post(url: str, start: int) -> None:
        events = [{"name": "step", "correlation_id": f"run-{i % 9}", "payload": {"i": i}} for i in range(start, start + 250)]
        body = "".join(json.dumps(e) + "\n" for e in events).encode()
        with urllib.request.urlopen(urllib.request.Request(url + "/events", data=body, method="POST"), timeout=30) as a:
            ids.update(json.load(a)["ids"])

    async def publish(js: JetStreamContext, start: int) -> None:
        for i in range(start, start + 250):
            corr = f"run-{i % 9}"
            event_id = str(uuid.uuid4())
            event = {"name": "step", "id": event_id, "correlation_id": corr, "payload": {"i": i}}
            await js.publish(subject("step", corr), json.dumps(event).encode(), headers={"Nats-Msg-Id": event_id})
            ids.add(event_id)

    async def run() -> None:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        try:
            for round in range(20):
                http_to = url_a if round % 2 == 0 or round >= 10 else url_b
                await asyncio.to_thread(post, http_to, round * 500)
                await publish(js, round * 500 + 250)
                if round == 9:
                    # B freezes with messages taken, then dies without warning.
                    host_b.send_signal(signal.SIGSTOP)
                    await asyncio.sleep(0.2)
                    host_b.kill()
                    host_b.wait()
            # Nothing lost: the consumer's acknowledged floor reaches the
            # stream's last message, B's unacknowledged ones handled by A.
            deadline = time.monotonic() + 60
            while True:
                stream = await js.stream_info("PLUGBUS")
                info = await js.consumer_info("PLUGBUS", "plugbus-console-logger")
                if info.ack_floor is not None and info.ack_floor.stream_seq == stream.state.last_seq \
                        and info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                assert time.monotonic() < deadline, (stream.state, info)
                await asyncio.sleep(0.2)
            assert stream.state.messages == 10_000 == len(ids)
        finally:
            await nc.close()

    try:
        asyncio.run(run())
        with urllib.request.urlopen(url_a + "/plugins", timeout=10) as answer:
            doc = json.load(answer)
        consumer = doc["nats"]["consumers"]["console-logger"]
        # Duplicates: what B held when it died, at most the window (1,024).
        assert 0 <= consumer["redelivered"] <= 1024, consumer
        assert consumer["terminated"] == 0 and consumer["nakked"] == 0, consumer
    finally:
        host_a.terminate()
        host_a.wait(timeout=15)
        if host_b.poll() is None:
            host_b.kill()
