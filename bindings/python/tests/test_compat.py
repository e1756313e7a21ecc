"""agent-event-bus's behaviours, one by one, on plugbus's EventBus (no
plugins: the pure drop-in)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from plugbus import Event, EventBus


def recorder() -> tuple[list[str], object]:
    seen: list[str] = []

    def handler(event: Event) -> None:
        seen.append(event.type)

    return seen, handler


def test_exact_match_as_call_and_decorator_returns_the_handler() -> None:
    bus = EventBus()
    seen, handler = recorder()
    assert bus.on("llm.call", handler) is handler

    @bus.on("tool.called")
    def decorated(event: Event) -> None:
        seen.append("decorated:" + event.type)

    assert callable(decorated)
    bus.emit("llm.call")
    bus.emit("tool.called")
    bus.emit("llm.other")
    assert seen == ["llm.call", "decorated:tool.called"]


def test_star_matches_exactly_one_segment_and_is_not_the_firehose() -> None:
    bus = EventBus()
    seen, handler = recorder()
    bus.on("llm.*", handler)
    bus.on("*", lambda e: seen.append("star:" + e.type))
    for name in ["llm.call", "llm.call.start", "llm", "top", "tool.called"]:
        bus.emit(name)
    assert seen == ["llm.call", "star:llm", "star:top"]


def test_double_star_matches_one_or_more_trailing_segments() -> None:
    bus = EventBus()
    seen, handler = recorder()
    bus.on("llm.**", handler)
    bus.on("**", lambda e: seen.append("all:" + e.type))
    for name in ["llm", "llm.call", "llm.call.start"]:
        bus.emit(name)
    assert seen == ["all:llm", "llm.call", "all:llm.call", "llm.call.start", "all:llm.call.start"]


def test_mixed_wildcards_and_literal_stars() -> None:
    bus = EventBus()
    seen, handler = recorder()
    bus.on("agent.*.tool.**", handler)
    bus.on("llm*", lambda e: seen.append("literal:" + e.type))
    for name in ["agent.a.tool.x", "agent.b.tool.x.y", "agent.tool.x", "agent.a.tool", "llm*", "llmx"]:
        bus.emit(name)
    assert seen == ["agent.a.tool.x", "agent.b.tool.x.y", "literal:llm*"]


@pytest.mark.parametrize("pattern", ["", "a..b", ".a", "a.", "a.**.b", "**.x", 3, None])
def test_invalid_patterns_raise_value_error(pattern: object) -> None:
    bus = EventBus()
    with pytest.raises(ValueError):
        bus.on(pattern, lambda e: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        bus.once(pattern, lambda e: None)  # type: ignore[arg-type]


def test_handlers_run_in_registration_order_wildcards_and_exact_alike() -> None:
    bus = EventBus()
    order: list[int] = []
    bus.on("a.*", lambda e: order.append(1))
    bus.on("a.b", lambda e: order.append(2))
    bus.on("**", lambda e: order.append(3))
    bus.on("a.b", lambda e: order.append(4))
    bus.emit("a.b")
    assert order == [1, 2, 3, 4]


def test_sync_handlers_run_inline_on_the_callers_thread() -> None:
    bus = EventBus()
    threads: list[threading.Thread] = []
    bus.on("x", lambda e: threads.append(threading.current_thread()))
    bus.emit("x")
    assert threads == [threading.current_thread()]


def test_off_removes_the_first_registration_by_identity() -> None:
    bus = EventBus()
    seen, handler = recorder()
    bus.on("x", handler)
    bus.on("x", handler)
    assert bus.off("x", handler) is True
    bus.emit("x")
    assert seen == ["x"]
    assert bus.off("x", handler) is True
    assert bus.off("x", handler) is False
    assert bus.off("y", lambda e: None) is False


def test_clear_and_subscribers() -> None:
    bus = EventBus()
    h1 = lambda e: None  # noqa: E731
    h2 = lambda e: None  # noqa: E731
    bus.on("a", h1)
    bus.on("b.*", h2)
    bus.on("a", h2)
    assert bus.subscribers() == [("a", h1), ("b.*", h2), ("a", h2)]
    assert bus.subscribers("a") == [("a", h1), ("a", h2)]
    assert bus.subscribers("b.x") == []
    bus.clear()
    assert bus.subscribers() == []


def test_a_failing_handler_fails_alone_and_reaches_the_callback() -> None:
    errors: list[tuple[str, object, BaseException]] = []
    bus = EventBus(handler_error_callback=lambda e, h, exc: errors.append((e.type, h, exc)))
    seen, handler = recorder()

    def bad(event: Event) -> None:
        raise RuntimeError("boom")

    bus.on("x", bad)
    bus.on("x", handler)
    event = bus.emit("x")
    assert seen == ["x"]
    assert len(errors) == 1
    assert errors[0][0] == "x" and errors[0][1] is bad and str(errors[0][2]) == "boom"
    assert event.type == "x"


def test_a_callback_that_raises_is_logged_and_dispatch_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def callback(event: Event, handler: object, exc: BaseException) -> None:
        raise ValueError("the callback broke")

    bus = EventBus(handler_error_callback=callback)
    seen, handler = recorder()
    bus.on("x", lambda e: 1 / 0)
    bus.on("x", handler)
    bus.emit("x")
    assert seen == ["x"]
    assert "handler_error_callback raised" in caplog.text


def test_the_default_callback_logs(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    bus.on("x", lambda e: 1 / 0)
    bus.emit("x")
    assert "ZeroDivisionError" in caplog.text


def test_strict_mode_reraises_and_stops_dispatch() -> None:
    bus = EventBus()
    assert bus.strict is False
    bus.set_strict()
    assert bus.strict is True
    seen, handler = recorder()
    bus.on("x", lambda e: 1 / 0)
    bus.on("x", handler)
    with pytest.raises(ZeroDivisionError):
        bus.emit("x")
    assert seen == []
    bus.set_strict(False)
    bus.emit("x")
    assert seen == ["x"]


def test_strict_mode_with_async_handlers() -> None:
    bus = EventBus()
    bus.set_strict(True)

    async def bad(event: Event) -> None:
        raise KeyError("async boom")

    bus.on("x", bad)
    with pytest.raises(KeyError):
        asyncio.run(bus.emit_async("x"))


def test_history_is_off_by_default_capped_and_sliced() -> None:
    assert EventBus().history() == []
    bus = EventBus(keep_history=True, history_size=3)
    for i in range(5):
        bus.emit(f"e{i}", i)
    assert [e.type for e in bus.history()] == ["e2", "e3", "e4"]
    assert [e.type for e in bus.history(2)] == ["e3", "e4"]
    assert bus.history(0) == []
    with pytest.raises(ValueError):
        bus.history(-1)


@pytest.mark.parametrize("keep", [True, False])
def test_history_size_below_one_raises_even_with_history_off(keep: bool) -> None:
    with pytest.raises(ValueError):
        EventBus(keep_history=keep, history_size=0)


def test_events_are_frozen_with_the_libraries_fields() -> None:
    bus = EventBus()
    event = bus.emit("x", {"a": 1})
    assert (event.type, event.data) == ("x", {"a": 1})
    assert isinstance(event.id, str) and event.id
    assert isinstance(event.timestamp, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = "y"  # type: ignore[misc]
    alone = Event(type="x")
    assert alone.data is None and alone.id != Event(type="x").id
    assert [f.name for f in dataclasses.fields(Event)][:4] == ["type", "data", "timestamp", "id"]


def test_emit_async_awaits_async_handlers_concurrently() -> None:
    bus = EventBus()
    arrived: list[int] = []

    async def main() -> None:
        everyone = asyncio.Event()

        def make(i: int):  # each handler waits until all three have started
            async def handler(event: Event) -> None:
                arrived.append(i)
                if len(arrived) == 3:
                    everyone.set()
                await asyncio.wait_for(everyone.wait(), timeout=5)

            return handler

        for i in range(3):
            bus.on("x", make(i))
        sync_seen: list[str] = []
        bus.on("x", lambda e: sync_seen.append("sync"))
        await bus.emit_async("x")
        assert sync_seen == ["sync"]

    asyncio.run(main())
    assert sorted(arrived) == [0, 1, 2]


def test_emit_async_reports_async_errors_to_the_callback() -> None:
    errors: list[BaseException] = []
    bus = EventBus(handler_error_callback=lambda e, h, exc: errors.append(exc))

    async def bad(event: Event) -> None:
        raise RuntimeError("async")

    bus.on("x", bad)
    asyncio.run(bus.emit_async("x"))
    assert [str(e) for e in errors] == ["async"]


def test_emit_drives_an_async_handler_when_no_loop_runs() -> None:
    bus = EventBus()
    done: list[bool] = []

    async def handler(event: Event) -> None:
        await asyncio.sleep(0)
        done.append(True)

    bus.on("x", handler)
    bus.emit("x")
    assert done == [True]


def test_emit_inside_a_running_loop_schedules_the_async_handler() -> None:
    bus = EventBus()
    done: list[bool] = []

    async def handler(event: Event) -> None:
        done.append(True)

    bus.on("x", handler)

    async def main() -> None:
        bus.emit("x")
        assert done == []  # scheduled, not awaited
        await asyncio.sleep(0.01)
        assert done == [True]

    asyncio.run(main())


def test_ten_threads_emitting_lose_nothing() -> None:
    bus = EventBus(keep_history=True, history_size=1000)
    seen: list[str] = []
    lock = threading.Lock()

    def handler(event: Event) -> None:
        with lock:
            seen.append(event.id)

    bus.on("t.*", handler)
    threads = [
        threading.Thread(target=lambda i=i: [bus.emit(f"t.{i}", n) for n in range(50)]) for i in range(10)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 500 and len(set(seen)) == 500
    assert len(bus.history(1000)) == 500


def test_subscribing_while_other_threads_emit() -> None:
    bus = EventBus()
    stop = threading.Event()
    count = [0]

    def emitter() -> None:
        while not stop.is_set():
            bus.emit("x")

    threads = [threading.Thread(target=emitter) for _ in range(3)]
    for t in threads:
        t.start()
    handlers = []
    for _ in range(200):
        h = lambda e: count.__setitem__(0, count[0] + 1)  # noqa: E731
        bus.on("x", h)
        handlers.append(h)
    for h in handlers[:100]:
        assert bus.off("x", h)
    stop.set()
    for t in threads:
        t.join()
    assert len(bus.subscribers("x")) == 100
    before = count[0]
    bus.emit("x")
    assert count[0] == before + 100


def test_once_fires_exactly_once_across_threads() -> None:
    bus = EventBus()
    fired: list[str] = []
    bus.once("x", lambda e: fired.append(e.id))
    threads = [threading.Thread(target=lambda: [bus.emit("x") for _ in range(20)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fired) == 1
    assert bus.subscribers("x") == []


def test_named_buses_are_the_same_object_anywhere() -> None:
    from plugbus import get_bus

    a = get_bus("test-named", keep_history=True)
    assert get_bus("test-named") is a
    assert get_bus("other-name") is not a
    a.shutdown()
    assert get_bus("test-named") is not a


def test_a_bus_is_a_context_manager() -> None:
    with EventBus() as bus:
        seen, handler = recorder()
        bus.on("x", handler)
        bus.emit("x")
    assert seen == ["x"]
