"""`EventBus` beyond agent-event-bus's behaviour: arguments refused before
anything is built (no leaked threads), async handlers' tasks on a running
loop, `get_bus` per name, and `query`'s errors."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import plugbus._bus
from plugbus import Event, EventBus, QueryError, get_bus


def bus_threads() -> int:
    """This process's threads that belong to a bus: the Python dispatcher
    (`plugbus-follow-ups`) and the native runtime's (`plugbus`)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:
            pass  # ended meanwhile
    return sum(1 for name in names if name.startswith("plugbus"))


def settled_bus_threads(most: int) -> int:
    """`bus_threads()` once at most `most` are left (a shut-down runtime's
    threads take a moment to exit), or what is left after 5 s."""
    deadline = time.monotonic() + 5
    while (found := bus_threads()) > most and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_a_refused_argument_builds_no_bus(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    plugins = plugin_dir("cost-tracker")
    before = bus_threads()
    for _ in range(3):
        # Only refusable once the plugins were loaded, before the fix.
        with pytest.raises(ValueError, match="need a log_dir"):
            EventBus(plugin_dir=plugins, cache_dir=cache_dir, log_retention_bytes=1 << 20)
    assert settled_bus_threads(before) <= before
    assert not [t for t in threading.enumerate() if t.name == "plugbus-follow-ups"]


def test_a_bus_that_fails_half_way_is_shut_down(
    plugin_dir: Callable[..., Path], cache_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = plugin_dir("cost-tracker")
    before = bus_threads()

    class NoThreads(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    # The native bus is built, then its dispatcher thread cannot start.
    monkeypatch.setattr(threading, "Thread", NoThreads)  # the module plugbus._bus uses
    with pytest.raises(RuntimeError, match="can't start new thread") as failed:
        EventBus(plugin_dir=plugins, cache_dir=cache_dir)
    monkeypatch.undo()
    # The error is kept (as a caller logging it would keep it): its frames
    # keep the half-built bus, which must not keep its threads.
    assert failed.value.__traceback__ is not None
    assert settled_bus_threads(before) <= before


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"history_size": "5"}, TypeError, "history_size"),
        ({"history_size": None}, TypeError, "history_size"),
        ({"keep_history": True, "history_size": 2.5}, TypeError, "history_size"),
        ({"log_retention_bytes": -1}, ValueError, "log_retention_bytes"),
        ({"log_retention_bytes": 2**70}, ValueError, "log_retention_bytes"),
        ({"log_segment_bytes": -1}, ValueError, "log_segment_bytes"),
        ({"log_retention_age_s": "5"}, TypeError, "log_retention_age_s"),
        ({"limits": {"fuel": "100"}}, ValueError, "limits.fuel"),
        ({"limits": {"fuel": True}}, ValueError, "limits.fuel"),
        ({"limits": {"fuel": 2**70}}, ValueError, "limits.fuel"),
        ({"limits": [("fuel", 1)]}, TypeError, "limits"),
        ({"handler_error_callback": 5}, TypeError, "handler_error_callback"),
    ],
)
def test_a_bad_argument_is_refused_at_once_by_name(
    kwargs: dict[str, Any], error: type[Exception], names: str, tmp_path: Path
) -> None:
    if any(k.startswith("log_") for k in kwargs):
        kwargs = {**kwargs, "log_dir": tmp_path / "log"}
    with pytest.raises(error, match=names.replace(".", r"\.")):
        EventBus(**kwargs)
    assert not (tmp_path / "log").exists()  # refused before the log was opened


def test_limits_are_checked_without_plugins_too() -> None:
    # Nothing uses them without plugins, but a typo'd call must not pass
    # only to fail once plugin_dir is added.
    with pytest.raises(ValueError, match=r"limits\.fuel"):
        EventBus(limits={"fuel": -5})
    with pytest.raises(TypeError, match="limits"):
        EventBus(limits=[("fuel", 1)])  # type: ignore[arg-type]
    EventBus(limits={"fuel": 1_000_000}).shutdown()


def test_a_handler_that_is_not_callable_is_refused_when_registered() -> None:
    bus = EventBus()
    with pytest.raises(TypeError, match="callable"):
        bus.on("p", 5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="callable"):
        bus.once("p")(None)  # type: ignore[type-var]
    assert bus.subscribers() == []
    bus.emit("p")  # nothing registered, nothing raised


def test_an_async_handler_on_a_running_loop_reports_its_error_and_is_kept_alive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors: list[tuple[str, BaseException]] = []
    bus = EventBus(handler_error_callback=lambda event, handler, exc: errors.append((event.type, exc)))
    gates: list[weakref.ref[asyncio.Future[None]]] = []
    done: list[str] = []

    async def bad(event: Event) -> None:
        await asyncio.sleep(0)
        raise ValueError("async bad")

    async def waits(event: Event) -> None:
        # Only this task's frame holds the future: unless the bus holds the
        # task, the two are a cycle the garbage collector may free mid-flight.
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gates.append(weakref.ref(gate))
        await gate
        done.append(event.type)

    bus.on("bad", bad)
    bus.on("wait", waits)
    caplog.set_level(logging.ERROR, logger="asyncio")

    async def main() -> None:
        bus.emit("bad")
        bus.emit("wait")
        await asyncio.sleep(0.01)
        gc.collect()
        gate = gates[0]()
        assert gate is not None, "the handler's task was garbage-collected mid-flight"
        gate.set_result(None)
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert [(name, str(exc)) for name, exc in errors] == [("bad", "async bad")]
    assert done == ["wait"]
    # Strict mode cannot re-raise into an emit that has returned: the error
    # still goes to the callback, never to asyncio's "never retrieved" log.
    bus.set_strict(True)

    async def strict() -> None:
        bus.emit("bad")
        await asyncio.sleep(0.01)

    asyncio.run(strict())
    assert len(errors) == 2
    gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_get_bus_builds_one_name_without_holding_up_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()

    class SlowBus(EventBus):
        """A bus whose build takes as long as the test says (as loading
        plugins can take seconds)."""

        def __init__(self, *, slow: bool = False, **options: Any) -> None:
            if slow:
                entered.set()
                release.wait(10)
            super().__init__(**options)

    monkeypatch.setattr(plugbus._bus, "EventBus", SlowBus)
    slow_name, other_name = f"slow-{uuid.uuid4()}", f"other-{uuid.uuid4()}"
    got: dict[str, list[EventBus]] = {slow_name: [], other_name: []}

    def fetch(name: str, **options: Any) -> None:
        got[name].append(get_bus(name, **options))

    builder = threading.Thread(target=fetch, args=(slow_name,), kwargs={"slow": True})
    builder.start()
    assert entered.wait(10)
    same_name = threading.Thread(target=fetch, args=(slow_name,))
    same_name.start()
    other = threading.Thread(target=fetch, args=(other_name,))
    other.start()
    other.join(timeout=2)
    finished_while_building = not other.is_alive()
    release.set()
    for thread in (builder, same_name, other):
        thread.join(timeout=10)
    try:
        assert finished_while_building, "get_bus of another name waited for this name's build"
        # Callers of the name being built waited for it: one bus.
        first, second = got[slow_name]
        assert first is second
        assert len(got[other_name]) == 1 and got[other_name][0] is not first
    finally:
        for buses in got.values():
            for bus in buses:
                bus.shutdown()


def test_query_refuses_nan_and_says_shutting_down_after_shutdown(
    plugin_dir: Callable[..., Path], cache_dir: str
) -> None:
    bus = EventBus(plugin_dir=plugin_dir("agent-runs"), cache_dir=cache_dir)
    try:
        # As emit refuses NaN: `json.dumps` would send the non-JSON `NaN`.
        with pytest.raises(ValueError, match="no JSON form"):
            bus.query("agent-runs", {"summary": True, "x": math.nan})
        assert bus.query("agent-runs", {"summary": True})["answer"]["runs"] == 0
    finally:
        bus.shutdown()
    with pytest.raises(QueryError) as refused:
        bus.query("agent-runs", {"summary": True})
    assert refused.value.kind == "shutting_down"


def nested(levels: int) -> Any:
    """`levels` lists inside each other around a 0."""
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def test_data_nested_past_what_the_log_reads_back_is_refused(tmp_path: Path) -> None:
    """126 levels of lists and dicts are what the event log's readers read
    back; deeper data once went into the log (up to 512) and made
    `plugbus log show` call the whole log corrupt. It is refused now, as
    other data with no JSON form is: Python handlers only, counted."""
    import subprocess

    from conftest import BIN

    log = tmp_path / "log"
    bus = EventBus(log_dir=log)
    deepest = bus.emit("deep.ok", {"x": nested(125)})
    deeper = bus.emit("deep.refused", {"x": nested(126)})
    assert deepest.seq == 1
    assert deeper.seq is None
    assert bus.unserialisable == 1
    bus.shutdown()
    shown = subprocess.run(
        [str(BIN), "log", "show", "--log", str(log)], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "deep.ok" in shown.stdout and "deep.refused" not in shown.stdout


def test_a_python_event_named_like_an_announcement_reaches_handlers_once(tmp_path: Path) -> None:
    """The host's own `plugbus.*` announcements are forwarded to Python
    handlers; a Python event of such a name was too, after its handlers
    had run inline: they got it twice (and history held it twice)."""
    bus = EventBus(log_dir=tmp_path / "log", keep_history=True)
    got: list[tuple[str, int | None, str]] = []
    bus.on("plugbus.**", lambda e: got.append((e.type, e.seq, threading.current_thread().name)))
    bus.emit("plugbus.my_event", {"x": 1})
    bus.emit_and_wait("plugbus.my_other", {"x": 2})
    bus.flush()
    bus.shutdown()
    assert [(name, seq) for name, seq, _ in got] == [("plugbus.my_event", 1), ("plugbus.my_other", 2)]
    assert all(thread != "plugbus-follow-ups" for _, _, thread in got), got
    assert [e.type for e in bus.history()] == ["plugbus.my_event", "plugbus.my_other"]


def test_a_bus_dropped_without_shutdown_is_collected_and_stopped(tmp_path: Path) -> None:
    """agent-event-bus has no `shutdown()` for users to call: a bus with a
    native side that nobody holds any more is collected, and its plugins,
    threads and log lock go with it. Its dispatcher thread held it, so it
    never was (20 dropped buses: 20 alive, 145 OS threads)."""
    before = bus_threads()
    log = tmp_path / "log"

    def use_and_drop() -> weakref.ref[EventBus]:
        bus = EventBus(log_dir=log)
        bus.on("a", lambda e: None)
        bus.emit("a", {"x": 1})
        bus.flush()
        return weakref.ref(bus)

    gone = use_and_drop()
    gc.collect()
    assert gone() is None, "the bus is still alive"
    deadline = time.monotonic() + 10
    while bus_threads() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert bus_threads() == before
    # The log's lock went with it: the same directory opens again.
    again = EventBus(log_dir=log)
    assert again.emit("b", {}).seq == 2
    again.shutdown()


def test_log_status_tells_an_event_the_log_could_not_hold(tmp_path: Path) -> None:
    """An event over the log's 64 MiB frame is delivered live and gets a
    `seq`, but the log has a gap there: Python sees it in `log_status()`
    (it only had a Rust API and a warning)."""
    assert EventBus().log_status() is None
    bus = EventBus(log_dir=tmp_path / "log")
    small = bus.emit("small", {"x": 1})
    big = bus.emit("big", {"text": "x" * (65 << 20)})
    assert (small.seq, big.seq) == (1, 2)
    # The log's writer settles the big one on its own thread, soon.
    deadline = time.monotonic() + 10
    status = bus.log_status()
    while status is not None and status["oversize"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
        status = bus.log_status()
    assert status is not None
    assert (status["last_seq"], status["lost"], status["oversize"]) == (2, 1, 1), status
    assert status["failed"] is None
    bus.shutdown()
