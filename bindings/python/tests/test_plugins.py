"""Wasm observers in the same bus: the real plugins, a real native bus."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import BIN
from plugbus import Event, EventBus, PlugbusError, QueryError

USAGE = {"model": "gpt-4.1", "usage": {"prompt_tokens": 1000, "completion_tokens": 200}, "cost_usd": 0.75}


def stats(bus: EventBus, name: str) -> dict:
    return next(p for p in bus.plugins() if p["name"] == name)["stats"]


def test_plugins_get_the_events_and_their_follow_ups_reach_python(
    plugin_dir: Callable[..., Path], cache_dir: str
) -> None:
    plugins = plugin_dir(cost_tracker='[config]\nbudget_usd = "1.00"\n')
    with EventBus(plugin_dir=plugins, cache_dir=cache_dir, keep_history=True) as bus:
        assert [p["name"] for p in bus.plugins()] == ["cost-tracker"]
        exceeded: list[Event] = []
        bus.on("budget_exceeded", exceeded.append)
        for _ in range(2):
            bus.emit("model_responded", USAGE, correlation_id="run-42")
        bus.flush()
        assert len(exceeded) == 1
        follow_up = exceeded[0]
        assert follow_up.source == "cost-tracker"
        assert follow_up.correlation_id == "run-42"
        assert follow_up.data["spent_usd"] == pytest.approx(1.5)
        assert follow_up.data["calls"] == 2
        assert stats(bus, "cost-tracker")["delivered"] == 2
        assert [e.type for e in bus.history()] == ["model_responded", "model_responded", "budget_exceeded"]


def test_unserialisable_data_reaches_python_handlers_and_skips_plugins(
    plugin_dir: Callable[..., Path], cache_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    with EventBus(plugin_dir=plugin_dir("console-logger"), cache_dir=cache_dir) as bus:
        got: list[object] = []
        bus.on("**", lambda e: got.append(e.data))
        marker = object()
        bus.emit("x", marker)
        bus.emit("x", {"set": {1, 2}})
        bus.emit("x", {"fine": True})
        bus.flush()
        assert got[0] is marker and len(got) == 3
        assert bus.unserialisable == 2
        assert stats(bus, "console-logger")["delivered"] == 1
        assert caplog.text.count("not JSON-serialisable") == 1


def test_emit_and_wait_reports_each_plugins_outcome(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    with EventBus(plugin_dir=plugin_dir("misbehave", "console-logger"), cache_dir=cache_dir) as bus:
        report = bus.emit_and_wait("misbehave.panic", {"n": 1})
        outcomes = {d["handler"]: d for d in report["deliveries"]}
        assert outcomes["misbehave"]["outcome"] == "failed"
        assert outcomes["misbehave"]["kind"] == "panic"
        assert outcomes["console-logger"]["outcome"] == "ok"
        assert report["event"].type == "misbehave.panic"
        # The plugin failed alone: the emitter saw no error, the next event is fine.
        assert bus.emit_and_wait("misbehave.noop")["deliveries"][0]["outcome"] == "ok"


def test_queries_reach_the_read_model(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    with EventBus(plugin_dir=plugin_dir("agent-runs", "misbehave"), cache_dir=cache_dir) as bus:
        bus.emit("agent.run_started", {"agent": "researcher"}, correlation_id="run-1")
        bus.emit("tool.called", {"tool": "web_search"}, correlation_id="run-1")
        bus.emit("agent.completed", {}, correlation_id="run-1")
        bus.flush()
        answer = bus.query("agent-runs", {"run": "run-1"})
        assert answer["as_of_seq"] == 3
        assert answer["answer"]["status"] == "completed"
        assert answer["answer"]["tools"] == ["web_search"]
        assert bus.query("agent-runs", '{"agents": true}')["answer"]["agents"]["researcher"]["runs"] == 1
        for plugin, request, kind in [
            ("agent-runs", {"run": "nope"}, "plugin_error"),
            ("ghost", {}, "unknown_plugin"),
            ("misbehave", {"do": "spin"}, "limit"),
        ]:
            with pytest.raises(QueryError) as err:
                bus.query(plugin, request)
            assert err.value.kind == kind, err.value


def test_plugin_work_never_holds_the_gil(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    with EventBus(plugin_dir=plugin_dir("misbehave"), cache_dir=cache_dir) as bus:
        ticks = [0]
        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                ticks[0] += 1

        counter = threading.Thread(target=spin)
        counter.start()
        # The plugin sleeps in WASI until its deadline (100 ms) stops it; the
        # Python thread must make progress meanwhile.
        report = bus.emit_and_wait("misbehave.sleep")
        during = ticks[0]
        stop.set()
        counter.join()
        assert report["deliveries"][0]["kind"] == "deadline"
        assert during > 1000, during


def test_follow_ups_run_on_the_dispatcher_thread_not_a_tokio_thread(
    plugin_dir: Callable[..., Path], cache_dir: str
) -> None:
    plugins = plugin_dir(cost_tracker='[config]\nbudget_usd = "0.10"\n')
    with EventBus(plugin_dir=plugins, cache_dir=cache_dir) as bus:
        names: list[str] = []
        bus.on("budget_exceeded", lambda e: names.append(threading.current_thread().name))
        bus.emit("model_responded", USAGE)
        bus.flush()
        assert names == ["plugbus-follow-ups"]


def test_many_python_threads_emit_to_plugins_safely(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    manifest = "[limits]\nqueue_capacity = 4096\n"
    with EventBus(plugin_dir=plugin_dir(console_logger=manifest), cache_dir=cache_dir) as bus:
        seen = [0]
        lock = threading.Lock()

        def count(event: Event) -> None:
            with lock:
                seen[0] += 1

        bus.on("t.**", count)
        threads = [threading.Thread(target=lambda i=i: [bus.emit(f"t.{i}", n) for n in range(200)]) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bus.flush()
        assert seen[0] == 1600
        s = stats(bus, "console-logger")
        assert (s["delivered"], s["dropped"]) == (1600, 0)


def test_flush_async(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    import asyncio

    with EventBus(plugin_dir=plugin_dir("console-logger"), cache_dir=cache_dir) as bus:

        async def main() -> None:
            for i in range(100):
                await bus.emit_async("x", i)
            await bus.aflush()

        asyncio.run(main())
        assert stats(bus, "console-logger")["delivered"] == 100


def test_bad_configuration_is_a_clear_error(tmp_path: Path, plugin_dir: Callable[..., Path]) -> None:
    with pytest.raises(PlugbusError, match="does not exist"):
        EventBus(plugin_dir=tmp_path / "missing")
    with pytest.raises(ValueError, match="fule"):
        EventBus(plugin_dir=plugin_dir("console-logger"), limits={"fule": 3})
    with pytest.raises(ValueError, match="memory_mib"):
        EventBus(plugin_dir=plugin_dir("console-logger"), limits={"memory_mib": 10**9})
    # A corrupt plugin is a load failure naming the file; the others load.
    dir = plugin_dir("console-logger")
    (dir / "broken.wasm").write_bytes(b"not wasm at all")
    with EventBus(plugin_dir=dir) as bus:
        assert [p["name"] for p in bus.plugins()] == ["console-logger"]
        (failure,) = bus.load_failures()
        assert "broken.wasm" in json.dumps(failure)


def test_limits_apply_to_every_plugin(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    with EventBus(plugin_dir=plugin_dir("misbehave"), cache_dir=cache_dir, limits={"fuel": 1_000_000}) as bus:
        report = bus.emit_and_wait("misbehave.spin")
        assert report["deliveries"][0]["kind"] == "out_of_fuel"


def test_a_log_keeps_the_events(plugin_dir: Callable[..., Path], cache_dir: str, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with EventBus(plugin_dir=plugin_dir("agent-runs"), log_dir=log, cache_dir=cache_dir) as bus:
        first = bus.emit("agent.run_started", {"agent": "a"}, correlation_id="r")
        second = bus.emit("agent.failed", {"error": "x"}, correlation_id="r")
        assert (first.seq, second.seq) == (1, 2)
        bus.flush()
    assert (log / "segments").is_dir() or any(log.iterdir())
    with EventBus(plugin_dir=plugin_dir("agent-runs"), log_dir=log, cache_dir=cache_dir) as again:
        assert again.emit("x").seq == 3


def test_log_retention_bounds_the_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with EventBus(log_dir=log, log_segment_bytes=4096, log_retention_bytes=16_384) as bus:
        for i in range(500):
            bus.emit("model_responded", USAGE | {"i": i})
        bus.flush()
        assert bus.emit("x").seq == 501
    segments = sorted(log.glob("*.seg"))
    # The budget plus the segment being written, at most; the oldest gone.
    assert sum(f.stat().st_size for f in segments) <= 16_384 + 4_096 + 512
    assert int(segments[0].stem) > 1
    for bad, says in [
        ({"log_segment_bytes": 100}, "below the smallest"),
        ({"log_retention_age_s": -1.0}, "log_retention_age_s"),
    ]:
        with pytest.raises(ValueError, match=says):
            EventBus(log_dir=tmp_path / "other", **bad)
    with pytest.raises(ValueError, match="need a log_dir"):
        EventBus(log_retention_bytes=1)


def test_data_reaches_plugins_as_json_dumps_would_write_it(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    plugins = plugin_dir("audit-log")
    with EventBus(plugin_dir=plugins, cache_dir=cache_dir) as bus:
        bus.emit("x", {"tuple": (1, "a"), 1: "int key", None: True, "nested": [{"f": 1.5}], "big": 2**63})
        bus.emit("x", {"nan": float("nan")})  # no JSON form: Python handlers only
        bus.emit("x", 10**30)  # beyond 64 bits: likewise
        bus.flush()
        assert bus.unserialisable == 2
    lines = [json.loads(line) for line in (plugins / "audit" / "events.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    assert lines[0]["payload"] == {
        "tuple": [1, "a"],
        "1": "int key",
        "null": True,
        "nested": [{"f": 1.5}],
        "big": 2**63,
    }


def test_a_watched_directory_loads_a_plugin_dropped_in(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    import shutil
    import time

    from conftest import WASM_DIR

    plugins = plugin_dir("console-logger")
    with EventBus(plugin_dir=plugins, cache_dir=cache_dir, watch=True) as bus:
        staged = plugins.parent / "token-counter.wasm"
        shutil.copy(WASM_DIR / "token-counter.wasm", staged)
        staged.rename(plugins / "token-counter.wasm")  # write elsewhere, rename into place
        deadline = time.monotonic() + 20
        while "token-counter" not in [p["name"] for p in bus.plugins()]:
            assert time.monotonic() < deadline, bus.load_failures()
            time.sleep(0.05)
        bus.emit("model_responded", USAGE)
        bus.flush()
        assert stats(bus, "token-counter")["delivered"] == 1


def test_signed_plugins_load_and_unsigned_ones_are_refused_when_required(
    plugin_dir: Callable[..., Path], cache_dir: str, tmp_path: Path
) -> None:
    plugins = plugin_dir("cost-tracker", "console-logger")
    key = tmp_path / "release.key"
    subprocess.run([str(BIN), "keygen", "--key", str(key)], check=True, capture_output=True)
    subprocess.run(
        [str(BIN), "sign", "--key", str(key), "--comment", "py test", str(plugins / "cost-tracker.wasm")],
        check=True,
        capture_output=True,
    )
    public = tmp_path / "release.key.pub"
    with EventBus(plugin_dir=plugins, cache_dir=cache_dir, trusted_keys=public, require_signed=True) as bus:
        loaded = bus.plugins()
        assert [p["name"] for p in loaded] == ["cost-tracker"]
        assert loaded[0]["signer"]["trusted_comment"] == "py test"
        failures = bus.load_failures()
        assert len(failures) == 1 and "unsigned" in failures[0]["reason"], failures
    with pytest.raises(PlugbusError, match="no trusted keys"):
        EventBus(plugin_dir=plugins, cache_dir=cache_dir, require_signed=True)
