"""Emit cost from Python, side by side in one run (`make bench-python`).

1. `emit` with 10 Wasm subscribers (token-counter: parse the payload, add two
   numbers) against a plain-Python bus of agent-event-bus's shape with 10
   Python handlers doing the same work (parse the same JSON text) inline.
2. Dispatch to Python handlers alone (no plugins): plugbus's `EventBus` with
   10 trivial handlers against the plain-Python bus with the same 10.

Ratios are what matter on a shared machine; each pair is measured in
alternating rounds and the medians compared. Prints a table; `--json FILE`
writes it too.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from plugbus import EventBus

PAYLOAD = {
    "model": "gpt-4.1-mini",
    "usage": {"prompt_tokens": 1850, "completion_tokens": 240},
    "cost_usd": 0.0011,
    "latency_ms": 820,
}


@dataclass(frozen=True)
class PlainEvent:
    type: str
    data: object = None
    timestamp: float = field(default_factory=time.monotonic)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


def plain_matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    want, have = pattern.split("."), name.split(".")
    if want[-1] == "**":
        return len(have) > len(want) - 1 and all(w in ("*", h) for w, h in zip(want[:-1], have))
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have))


class PlainBus:
    """A plain-Python bus of agent-event-bus's shape, doing the work it does
    per emit: a frozen Event (uuid4 id, monotonic time), a lock-guarded
    snapshot of the matching (pattern, handler) pairs, each handler called
    inline with its result checked for an awaitable, errors caught."""

    def __init__(self) -> None:
        self._subs: list[tuple[str, object]] = []
        self._lock = threading.RLock()

    def on(self, pattern: str, handler) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self._subs.append((pattern, handler))

    def emit(self, type: str, data: object = None) -> PlainEvent:
        event = PlainEvent(type=type, data=data)
        with self._lock:
            handlers = [h for p, h in self._subs if plain_matches(p, type)]
        for h in handlers:
            try:
                result = h(event)  # type: ignore[operator]
                if inspect.isawaitable(result):
                    raise TypeError("the bench has no async handlers")
            except BaseException:
                pass
        return event


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def time_emits(emit, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        emit()
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugins", default="plugins/dist", help="directory holding token-counter.wasm")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    text = json.dumps(PAYLOAD)
    rows = []

    # 1. 10 Wasm subscribers vs 10 Python handlers parsing the JSON.
    tmp = Path(tempfile.mkdtemp())
    for i in range(10):
        shutil.copy(Path(args.plugins) / "token-counter.wasm", tmp / f"tc{i}.wasm")
        (tmp / f"tc{i}.toml").write_text("[limits]\nqueue_capacity = 65536\n")
    wasm = EventBus(plugin_dir=tmp)
    plain = PlainBus()
    totals = [0]

    def parse(event) -> None:  # type: ignore[no-untyped-def]
        usage = json.loads(event.data)["usage"]
        totals[0] += usage["prompt_tokens"] + usage["completion_tokens"]

    for _ in range(10):
        plain.on("model_responded", parse)
    w_p50, w_p99, p_p50, p_p99 = [], [], [], []
    for _ in range(args.rounds):
        s = time_emits(lambda: wasm.emit("model_responded", PAYLOAD), args.events)
        wasm.flush()  # the plugins' work is not the emitter's, but keep queues bounded
        a, b = percentiles(s)
        w_p50.append(a)
        w_p99.append(b)
        s = time_emits(lambda: plain.emit("model_responded", text), args.events)
        a, b = percentiles(s)
        p_p50.append(a)
        p_p99.append(b)
    dropped = sum(p["stats"]["dropped"] for p in wasm.plugins())
    wasm.shutdown()
    shutil.rmtree(tmp)
    for label, mine, theirs in [("p50", w_p50, p_p50), ("p99", w_p99, p_p99)]:
        rows.append(
            (f"emit, 10 Wasm subscribers vs 10 Python handlers parsing the JSON, {label}",
             statistics.median(mine), statistics.median(theirs))
        )

    # 2. Python handlers alone: per-handler overhead.
    mine_bus = EventBus()
    plain2 = PlainBus()
    for _ in range(10):
        mine_bus.on("model_responded", lambda e: None)
        plain2.on("model_responded", lambda e: None)
    m, p = [], []
    for _ in range(args.rounds):
        m.append(percentiles(time_emits(lambda: mine_bus.emit("model_responded", PAYLOAD), args.events))[0])
        p.append(percentiles(time_emits(lambda: plain2.emit("model_responded", PAYLOAD), args.events))[0])
    rows.append(("emit to 10 Python handlers, no plugins, p50 (per-handler overhead)",
                 statistics.median(m), statistics.median(p)))

    print(f"{'measure':<80} {'plugbus':>10} {'plain':>10} {'ratio':>7}")
    for name, mine_v, theirs_v in rows:
        print(f"{name:<80} {mine_v:>8.2f}µs {theirs_v:>8.2f}µs {mine_v / theirs_v:>7.3f}")
    print(f"(plugin events dropped: {dropped})")
    if args.json:
        args.json.write_text(json.dumps(
            {"python": sys.version.split()[0], "events": args.events, "rounds": args.rounds,
             "rows": [{"measure": n, "plugbus_us": a, "plain_us": b, "ratio": a / b} for n, a, b in rows]},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
