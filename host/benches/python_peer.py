"""The Python peer for `plugbus bench` scenario 7.

A plain in-process pub/sub bus with the shape of the Python `agent-event-bus`
model: `emit` calls every handler subscribed to the name inline, each inside
try/except so one failing handler cannot break the emitter. Ten handlers each
parse the same ~200-byte `model_responded` JSON and add up its tokens: the work
plugbus's token-counter plugins do in scenario 1.

Prints one JSON object: {"events", "handlers", "p50_us", "p99_us", "python"}.
`plugbus bench` runs this script with the same event count in the same run and
reports the ratio, so machine noise affects both sides alike.
"""

import argparse
import json
import platform
import sys
import time
from collections import defaultdict


class EventBus:
    def __init__(self):
        self._handlers = defaultdict(list)
        self.errors = 0

    def on(self, name, handler):
        self._handlers[name].append(handler)

    def emit(self, name, payload):
        event = {"name": name, "payload": payload}
        for handler in self._handlers.get(name, ()):
            try:
                handler(event)
            except Exception:  # an observer must never break the emitter
                self.errors += 1


def payload(i):
    # The same fields and sizes as plugbus bench's payload; the JSON text is
    # made before the timer starts, as plugbus receives a ready value.
    return json.dumps({
        "model": "gpt-4.1-mini",
        "usage": {"prompt_tokens": 1200 + i % 7, "completion_tokens": 300 + i % 5},
        "cost_usd": 0.00123,
        "latency_ms": 840,
        "request_id": "req_7f3a9c21",
        "finish_reason": "stop",
    })


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--handlers", type=int, default=10)
    args = parser.parse_args()

    bus = EventBus()
    totals = [0] * args.handlers
    for h in range(args.handlers):
        def count(event, h=h):
            usage = json.loads(event["payload"])["usage"]
            totals[h] += usage["prompt_tokens"] + usage["completion_tokens"]
        bus.on("model_responded", count)

    payloads = [payload(i) for i in range(args.events)]
    for p in payloads[: min(1000, args.events)]:  # warm up
        bus.emit("model_responded", p)
    samples = []
    clock = time.perf_counter_ns
    for p in payloads:
        t = clock()
        bus.emit("model_responded", p)
        samples.append(clock() - t)
    samples.sort()

    def pct(q):
        return samples[round((len(samples) - 1) * q)] / 1000.0

    json.dump({
        "events": args.events,
        "handlers": args.handlers,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "errors": bus.errors,
        "python": platform.python_version(),
    }, sys.stdout)


if __name__ == "__main__":
    main()
