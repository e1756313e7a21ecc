"""An OpenTelemetry-instrumented agent feeding `plugbus serve`, with no
hand-written emits: a pydantic-ai agent (its `TestModel`: no network, no
key) instrumented with `Agent.instrument_all`, exporting its GenAI spans with
the standard OTLP/HTTP exporter. plugbus maps them to `model_responded`,
`tool.*` and `agent.*` events; cost-tracker prices the tokens and emits
`budget_exceeded`, which stops the agent (read from the server's live event
stream, `GET /events/stream`).

    plugbus serve --plugins DIR --otlp-listen 127.0.0.1:4318 &
    python examples/otel-agent/agent.py --plugbus http://127.0.0.1:7070 --otlp http://127.0.0.1:4318

`make otel-example` does both with cost-tracker and agent-runs, and a price
for the test model that makes the budget run out after a few tasks.
"""

from __future__ import annotations

import argparse
import json
import threading
import urllib.parse
import urllib.request
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pydantic_ai import Agent
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.test import TestModel

TASKS = [
    "What is the weather in Paris?",
    "And in Lisbon?",
    "Compare Oslo and Rome.",
    "Plan a week in Kyoto.",
    "Where is it warmest today?",
    "Summarise all of the above.",
]


def watch_budget(plugbus: str, stop: threading.Event, seen: dict[str, Any]) -> None:
    """Sets `stop` when a `budget_exceeded` event goes by (server-sent events)."""
    url = f"{plugbus}/events/stream?pattern=budget_exceeded"
    with urllib.request.urlopen(url) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event.get("name") == "budget_exceeded":
                    seen.update(event)
                    stop.set()
                    return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugbus", default="http://127.0.0.1:7070", help="plugbus serve's address")
    parser.add_argument("--otlp", default="http://127.0.0.1:4318", help="where to export spans (OTLP/HTTP)")
    args = parser.parse_args()

    stop, exceeded = threading.Event(), {}
    threading.Thread(target=watch_budget, args=(args.plugbus, stop, exceeded), daemon=True).start()

    provider = TracerProvider(resource=Resource.create({"service.name": "otel-agent-example"}))
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{args.otlp}/v1/traces"))
    provider.add_span_processor(processor)
    Agent.instrument_all(InstrumentationSettings(tracer_provider=provider))
    agent: Agent[None, str] = Agent(TestModel(), name="travel-agent")

    @agent.tool_plain
    def forecast(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    done = 0
    for task in TASKS:
        if stop.is_set():
            break
        result = agent.run_sync(task)
        done += 1
        print(f"task {done}: {task!r} -> {result.output[:60]!r}")
        processor.force_flush()  # this task's spans reach plugbus now
        stop.wait(2.0)  # give the plugins a moment to price it
    provider.shutdown()

    if stop.is_set():
        data = exceeded.get("payload", {})
        print(f"budget exceeded after {done} of {len(TASKS)} tasks: "
              f"${data.get('spent_usd', 0):.4f} of ${data.get('budget_usd', 0):.2f} — agent stopped")
    else:
        print(f"all {done} tasks done within the budget")
    q = urllib.parse.quote(json.dumps({"runs": {"limit": 10}}))
    with urllib.request.urlopen(f"{args.plugbus}/plugins/agent-runs/query?q={q}") as answer:
        for run in json.load(answer)["answer"]["runs"]:
            print(f"  run {run['run'][:12]}… {run['agent']}: {run['status']}, {run['model_calls']} model calls, "
                  f"{run['tool_calls']} tool calls, {run['tokens']} tokens, ${run['cost_usd']:.4f}")
    return 0 if stop.is_set() else 1


if __name__ == "__main__":
    raise SystemExit(main())
