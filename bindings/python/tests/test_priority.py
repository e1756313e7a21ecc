"""Handler priority: higher first, ties in registration order, with and
without plugins in the bus."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from plugbus import Event, EventBus


def test_higher_priority_runs_first_and_ties_keep_registration_order() -> None:
    bus = EventBus()
    order: list[str] = []
    bus.on("tool.*", lambda e: order.append("audit"))
    bus.on("tool.called", lambda e: order.append("late"), priority=-1)
    bus.on("**", lambda e: order.append("guard"), priority=10)
    bus.on("tool.called", lambda e: order.append("metrics"))

    @bus.on("tool.called", priority=10)
    def guard_two(event: Event) -> None:
        order.append("guard-2")

    bus.once("tool.called", lambda e: order.append("once"), priority=99)
    bus.emit("tool.called")
    bus.emit("tool.called")
    assert order == [
        "once", "guard", "guard-2", "audit", "metrics", "late",
        "guard", "guard-2", "audit", "metrics", "late",
    ]
    assert [p for p, _ in bus.subscribers()] == ["**", "tool.called", "tool.*", "tool.called", "tool.called"]
    assert bus.off("tool.called", guard_two)
    order.clear()
    bus.emit("tool.done")
    assert order == ["guard", "audit"]


def test_a_high_priority_guard_sees_the_event_before_a_failing_handler() -> None:
    errors: list[str] = []
    bus = EventBus(handler_error_callback=lambda e, h, exc: errors.append(str(exc)))
    seen: list[str] = []

    def boom(event: Event) -> None:
        raise RuntimeError("handler failed")

    bus.on("step", boom)
    bus.on("step", lambda e: seen.append("guard"), priority=1)
    bus.emit("step")
    assert seen == ["guard"] and errors == ["handler failed"]


@pytest.mark.parametrize("bad", ["1", 1.5, True, None])
def test_priority_must_be_an_int(bad: object) -> None:
    bus = EventBus()
    with pytest.raises(TypeError, match="priority must be an int"):
        bus.on("x", lambda e: None, priority=bad)  # type: ignore[arg-type]


def test_priority_with_plugins_loaded(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    # Plugins run on their own queues; Python handlers keep their order.
    with EventBus(plugin_dir=plugin_dir("cost-tracker"), cache_dir=cache_dir) as bus:
        order: list[str] = []
        bus.on("llm.*", lambda e: order.append("b"))
        bus.on("llm.*", lambda e: order.append("a"), priority=5)
        bus.emit("llm.call", {"model": "m"})
        bus.flush()
        assert order == ["a", "b"]
        assert [p["name"] for p in bus.plugins()] == ["cost-tracker"]
