"""The agent-framework adapters' cost per callback (`make bench-python`).

Each adapter's methods are called directly, in a loop, with the arguments
the framework passes in a real run, against a no-op handler of the same
framework called with the same arguments; the difference is what the
adapter adds to every callback (target: <= 10 µs). Each step is timed; a
round's figure is its median step over the step's callbacks (robust to the
preemptions that a shared machine and the plugins' own threads cause), and
the rounds alternate adapter and no-op, their medians compared:

- LangChain (`PlugbusCallbackHandler`, and `AsyncPlugbusCallbackHandler`
  awaited on a loop): one agent step is 6 callbacks (root chain start, chat
  model start, model end with usage, tool start, tool end, root chain
  end) and 5 events.
- OpenAI Agents SDK (`PlugbusTracingProcessor`): one run is 8 callbacks
  (trace start, agent span start and end, generation span start and end,
  function span start and end, trace end) and 5 events.

Each on three buses: none (the adapter's own mapping: `emit` does nothing),
an `EventBus` without plugins (Python dispatch only), and an `EventBus`
with cost-tracker and agent-runs (every event crosses into the native bus).
Prints a table; `--json FILE` writes it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.tracing import TracingProcessor, gen_span_id, gen_trace_id
from agents.tracing.span_data import AgentSpanData, FunctionSpanData, GenerationSpanData
from agents.tracing.spans import SpanImpl
from agents.tracing.traces import TraceImpl
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, LLMResult

from plugbus import EventBus
from plugbus.integrations.langchain import AsyncPlugbusCallbackHandler, PlugbusCallbackHandler
from plugbus.integrations.openai_agents import PlugbusTracingProcessor

# ---- LangChain: what a chat model step with one tool call passes ----

SERIALIZED = {"lc": 1, "type": "constructor", "id": ["langchain", "chat_models", "openai", "ChatOpenAI"]}
MESSAGES = [[HumanMessage("What is the weather in Paris? Answer in one sentence.")]]
INVOCATION = {"model": "gpt-4.1-mini", "temperature": 0.0, "stream": False, "_type": "openai-chat"}
METADATA = {"ls_provider": "openai", "ls_model_name": "gpt-4.1-mini", "ls_model_type": "chat", "ls_temperature": 0.0}
RESULT = LLMResult(
    generations=[
        [
            ChatGeneration(
                message=AIMessage(
                    content="",
                    tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}],
                    usage_metadata={
                        "input_tokens": 1850,
                        "output_tokens": 240,
                        "total_tokens": 2090,
                        "input_token_details": {"cache_read": 1024},
                    },
                    response_metadata={"model_name": "gpt-4.1-mini-2025-04-14", "finish_reason": "tool_calls"},
                )
            )
        ]
    ]
)
TOOL_OUTPUT = ToolMessage(content="Sunny, 21°C, light wind from the west.", tool_call_id="call_1", name="get_weather")
CALLBACKS_PER_STEP = 6


class NoopHandler(BaseCallbackHandler):
    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        pass

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        pass

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        pass

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        pass

    def on_tool_start(self, serialized: Any, input_str: Any, **kwargs: Any) -> None:
        pass

    def on_tool_end(self, output: Any, **kwargs: Any) -> None:
        pass


class NoopAsyncHandler(AsyncCallbackHandler):
    async def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        pass

    async def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        pass

    async def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        pass

    async def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        pass

    async def on_tool_start(self, serialized: Any, input_str: Any, **kwargs: Any) -> None:
        pass

    async def on_tool_end(self, output: Any, **kwargs: Any) -> None:
        pass


def per_callback(samples: list[int], callbacks: int) -> float:
    """µs per callback: the median step over its callbacks."""
    return statistics.median(samples) / 1000 / callbacks


def langchain_steps(handler: Any, steps: int) -> float:
    """µs per callback over `steps` agent steps, called directly."""
    ids = [(uuid.uuid4(), uuid.uuid4(), uuid.uuid4()) for _ in range(steps)]
    samples = []
    clock = time.perf_counter_ns
    for root, llm, tool in ids:
        start = clock()
        handler.on_chain_start({}, {"input": "weather?"}, run_id=root, parent_run_id=None, name="support-agent")
        handler.on_chat_model_start(
            SERIALIZED, MESSAGES, run_id=llm, parent_run_id=root, metadata=METADATA, invocation_params=INVOCATION,
            name="ChatOpenAI", batch_size=1,
        )
        handler.on_llm_end(RESULT, run_id=llm, parent_run_id=root)
        handler.on_tool_start(
            {"name": "get_weather", "description": "The weather in a city."}, "{'city': 'Paris'}",
            run_id=tool, parent_run_id=root, inputs={"city": "Paris"}, name="get_weather", tool_call_id="call_1",
        )
        handler.on_tool_end(TOOL_OUTPUT, run_id=tool, parent_run_id=root, name="get_weather")
        handler.on_chain_end({"output": "Sunny."}, run_id=root, parent_run_id=None)
        samples.append(clock() - start)
    return per_callback(samples, CALLBACKS_PER_STEP)


def langchain_async_steps(handler: Any, steps: int) -> float:
    ids = [(uuid.uuid4(), uuid.uuid4(), uuid.uuid4()) for _ in range(steps)]

    async def drive() -> float:
        samples = []
        clock = time.perf_counter_ns
        for root, llm, tool in ids:
            start = clock()
            await handler.on_chain_start({}, {"input": "weather?"}, run_id=root, parent_run_id=None, name="agent")
            await handler.on_chat_model_start(
                SERIALIZED, MESSAGES, run_id=llm, parent_run_id=root, metadata=METADATA,
                invocation_params=INVOCATION, name="ChatOpenAI", batch_size=1,
            )
            await handler.on_llm_end(RESULT, run_id=llm, parent_run_id=root)
            await handler.on_tool_start(
                {"name": "get_weather", "description": "The weather in a city."}, "{'city': 'Paris'}",
                run_id=tool, parent_run_id=root, inputs={"city": "Paris"}, name="get_weather",
            )
            await handler.on_tool_end(TOOL_OUTPUT, run_id=tool, parent_run_id=root, name="get_weather")
            await handler.on_chain_end({"output": "Sunny."}, run_id=root, parent_run_id=None)
            samples.append(clock() - start)
        return per_callback(samples, CALLBACKS_PER_STEP)

    return asyncio.run(drive())


# ---- OpenAI Agents SDK: what a run with one model call and one tool passes ----


class NoopProcessor(TracingProcessor):
    def on_trace_start(self, trace: Any) -> None:
        pass

    def on_trace_end(self, trace: Any) -> None:
        pass

    def on_span_start(self, span: Any) -> None:
        pass

    def on_span_end(self, span: Any) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self) -> None:
        pass


CALLBACKS_PER_RUN = 8


def agents_runs(processor: Any, runs: int) -> float:
    noop = NoopProcessor()
    prepared = []
    for _ in range(runs):
        trace = TraceImpl("support", gen_trace_id(), None, None, noop)
        tid = trace.trace_id
        agent = SpanImpl(tid, gen_span_id(), None, noop, AgentSpanData("triage", tools=["get_weather"]), None)
        generation = SpanImpl(tid, gen_span_id(), agent.span_id, noop, GenerationSpanData(model="gpt-4.1-mini"), None)
        generation.span_data.usage = {
            "requests": 1, "input_tokens": 1850, "output_tokens": 240, "total_tokens": 2090,
            "input_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
        function = SpanImpl(tid, gen_span_id(), agent.span_id, noop, FunctionSpanData("get_weather", None, None), None)
        function.span_data.input = '{"city": "Paris"}'
        function.span_data.output = "Sunny, 21°C, light wind from the west."
        prepared.append((trace, agent, generation, function))
    samples = []
    clock = time.perf_counter_ns
    for trace, agent, generation, function in prepared:
        start = clock()
        processor.on_trace_start(trace)
        processor.on_span_start(agent)
        processor.on_span_start(generation)
        processor.on_span_end(generation)
        processor.on_span_start(function)
        processor.on_span_end(function)
        processor.on_span_end(agent)
        processor.on_trace_end(trace)
        samples.append(clock() - start)
    return per_callback(samples, CALLBACKS_PER_RUN)


class NullBus:
    """A bus whose `emit` does nothing: the adapter's own mapping alone."""

    def emit(self, type: str, data: Any = None, *, correlation_id: str | None = None) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugins", default="plugins/dist", help="directory holding cost-tracker and agent-runs")
    ap.add_argument("--steps", type=int, default=5_000, help="agent steps (runs) per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    for name in ("cost-tracker", "agent-runs"):
        shutil.copy(Path(args.plugins) / f"{name}.wasm", tmp / f"{name}.wasm")
        (tmp / f"{name}.toml").write_text("[limits]\nqueue_capacity = 65536\n")
    buses: list[tuple[str, Any]] = [
        ("no bus (mapping alone)", NullBus()),
        ("EventBus, no plugins", EventBus()),
        ("EventBus + cost-tracker, agent-runs", EventBus(plugin_dir=tmp)),
    ]
    cases: list[tuple[str, Callable[[Any], Any], Callable[[], Any], Callable[[Any, int], float]]] = [
        ("LangChain PlugbusCallbackHandler", lambda b: PlugbusCallbackHandler(b), NoopHandler, langchain_steps),
        (
            "LangChain AsyncPlugbusCallbackHandler",
            lambda b: AsyncPlugbusCallbackHandler(b),
            NoopAsyncHandler,
            langchain_async_steps,
        ),
        ("Agents SDK PlugbusTracingProcessor", lambda b: PlugbusTracingProcessor(b), NoopProcessor, agents_runs),
    ]
    rows = []
    for case, make, make_noop, drive in cases:
        for label, bus in buses:
            adapter, noop = make(bus), make_noop()
            drive(adapter, 200)  # warm up
            drive(noop, 200)
            mine, base = [], []
            for _ in range(args.rounds):
                mine.append(drive(adapter, args.steps))
                base.append(drive(noop, args.steps))
                if isinstance(bus, EventBus):
                    bus.flush()  # the plugins' work is not the agent's, but keep queues bounded
            failures = adapter.failures
            if failures:
                raise SystemExit(f"{case} on {label}: {failures} callbacks failed")
            m, b = statistics.median(mine), statistics.median(base)
            rows.append((f"{case}, {label}", m, b, m - b))
    dropped = sum(p["stats"]["dropped"] for p in buses[2][1].plugins())
    for _, bus in buses:
        if isinstance(bus, EventBus):
            bus.shutdown()
    shutil.rmtree(tmp)

    print(f"{'µs per callback':<78} {'adapter':>9} {'no-op':>9} {'added':>9}")
    for name, m, b, d in rows:
        print(f"{name:<78} {m:>9.2f} {b:>9.2f} {d:>9.2f}")
    print(f"(plugin events dropped: {dropped}; target: added <= 10 µs per callback)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "python": sys.version.split()[0],
                    "steps": args.steps,
                    "rounds": args.rounds,
                    "rows": [
                        {"measure": n, "adapter_us": m, "noop_us": b, "added_us": d} for n, m, b, d in rows
                    ],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
