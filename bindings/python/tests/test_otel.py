"""OpenTelemetry in, from Python: `PlugbusSpanExporter` hands finished spans
to the Rust GenAI mapping in-process, and the real OTLP/HTTP protobuf
exporter reaches a real `plugbus serve`. Spans come from the real
OpenTelemetry SDK and from pydantic-ai's own instrumentation (`TestModel`,
no network), into the real cost-tracker and agent-runs plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

if sys.version_info < (3, 11):  # the frameworks are installed for 3.11+ only
    pytest.skip("the OpenTelemetry SDK and pydantic-ai are installed for Python 3.11+ only", allow_module_level=True)

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode
from pydantic_ai import Agent
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.test import TestModel

from plugbus import Event, EventBus
from plugbus.integrations.otel import PlugbusSpanExporter

from conftest import serve_plugbus

ROOT = Path(__file__).resolve().parents[3]


def runs_of(bus: EventBus) -> list[dict[str, Any]]:
    bus.flush()
    answer = bus.query("agent-runs", {"runs": {"limit": 10}})
    runs: list[dict[str, Any]] = answer["answer"]["runs"]
    return runs


def test_sdk_spans_become_runs_and_priced_calls(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    bus = EventBus(plugin_dir=plugin_dir("cost-tracker", "agent-runs"), cache_dir=cache_dir)
    priced: list[Event] = []
    bus.on("cost.priced", priced.append)
    exporter = PlugbusSpanExporter(bus)
    provider = TracerProvider()
    # A batch processor (the recommended one) exports the run's spans
    # together, so the conversation id on the agent span names them all;
    # a SimpleSpanProcessor would export the children before it.
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("my-agent")
    with tracer.start_as_current_span("invoke_agent planner", attributes={
        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "planner",
        "gen_ai.conversation.id": "conv-py-1",
    }):
        with tracer.start_as_current_span("chat gpt-4.1-mini", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4.1-mini",
            "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 500,
        }):
            pass
        with tracer.start_as_current_span("execute_tool search", attributes={
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search",
        }) as tool:
            tool.set_attribute("error.type", "TimeoutError")
            tool.set_status(Status(StatusCode.ERROR, "timed out"))
        with tracer.start_as_current_span("GET /health"):  # not GenAI: dropped
            pass
    provider.shutdown()
    assert exporter.last_export is not None and exporter.failures == 0
    runs = runs_of(bus)
    assert len(runs) == 1, runs
    run = runs[0]
    assert run["run"] == "conv-py-1"
    assert run["agent"] == "planner"
    assert run["status"] == "completed"
    assert run["tools"] == ["search"]
    assert run["tokens"] == 1500
    assert run["errors"] == ["TimeoutError"]
    # gpt-4.1-mini from the built-in table: $0.40 in, $1.60 out per 1M tokens.
    assert [round(e.data["cost_usd"], 10) for e in priced] == [round((1000 * 0.40 + 500 * 1.60) / 1e6, 10)]
    assert run["cost_usd"] == pytest.approx(priced[0].data["cost_usd"])
    bus.shutdown()


@pytest.mark.parametrize("first", [False, True])
def test_exporters_on_one_bus_keep_their_own_all_spans(
    plugin_dir: Callable[..., Path], cache_dir: str, first: bool
) -> None:
    # The bus's receiver was once made by the first export, with that
    # exporter's setting: the other exporter's was silently ignored.
    bus = EventBus(plugin_dir=plugin_dir("agent-runs"), cache_dir=cache_dir)
    passed: list[Event] = []
    bus.on("otel.span", passed.append)
    for all_spans in (first, not first):
        exporter = PlugbusSpanExporter(bus, all_spans=all_spans)
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        with provider.get_tracer("web").start_as_current_span(f"GET /health all_spans={all_spans}"):
            pass  # not GenAI: an otel.span only with all_spans
        provider.shutdown()
        assert exporter.failures == 0 and exporter.last_export is not None
        if all_spans:
            assert (exporter.last_export["mapped"], exporter.last_export["published"]) == (1, 1)
        else:
            assert (exporter.last_export["dropped"], exporter.last_export["published"]) == (1, 0)
    bus.flush()
    assert [e.data["name"] for e in passed] == ["GET /health all_spans=True"]
    bus.shutdown()


def test_a_bus_without_its_native_half_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="plugin_dir or log_dir"):
        PlugbusSpanExporter(EventBus())


def pydantic_agent() -> Agent[None, str]:
    agent: Agent[None, str] = Agent(TestModel(), name="weather-agent")

    @agent.tool_plain
    def forecast(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    return agent


def run_instrumented(exporter: SpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    Agent.instrument_all(InstrumentationSettings(tracer_provider=provider))
    try:
        result = pydantic_agent().run_sync("What is the weather in Paris?")
        assert "sunny" in result.output
    finally:
        Agent.instrument_all(False)
        provider.shutdown()  # exports what the batch processor holds


def check_pydantic_run(run: dict[str, Any]) -> None:
    assert run["agent"] == "weather-agent", run
    assert run["status"] == "completed"
    assert run["tools"] == ["forecast"], run
    assert run["model_calls"] == 2, "TestModel calls the tool, then answers"
    assert run["tool_calls"] == 1
    assert run["tokens"] > 0
    assert run["errors"] == []


def test_pydantic_ai_through_the_in_process_exporter(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    bus = EventBus(plugin_dir=plugin_dir("cost-tracker", "agent-runs"), cache_dir=cache_dir)
    seen: list[Event] = []
    bus.on("**", seen.append)
    exporter = PlugbusSpanExporter(bus)
    run_instrumented(exporter)
    runs = runs_of(bus)
    assert len(runs) == 1, runs
    check_pydantic_run(runs[0])
    names = [e.type for e in seen if e.type in ("model_responded", "tool.called", "tool.result", "agent.run_started", "agent.run_finished")]
    assert names[0] == "agent.run_started" and names[-1] == "agent.run_finished", names
    model = next(e for e in seen if e.type == "model_responded")
    assert model.data["model"] == "test" and model.data["usage"]["prompt_tokens"] > 0
    bus.shutdown()


# The example's set-up (as `make otel-example` writes it): the test model
# priced so that the budget runs out after a few tasks.
EXAMPLE_COST_TRACKER = """
[config]
budget_usd = "0.05"
prices = '{"test": {"input": 200.0, "output": 800.0}}'
"""


@pytest.fixture
def served(plugin_dir: Callable[..., Path], cache_dir: str, tmp_path: Path) -> Iterator[str]:
    yield from serve(plugin_dir("cost-tracker", "agent-runs"), cache_dir, tmp_path)


@pytest.fixture
def served_example(plugin_dir: Callable[..., Path], cache_dir: str, tmp_path: Path) -> Iterator[str]:
    yield from serve(plugin_dir("agent-runs", cost_tracker=EXAMPLE_COST_TRACKER), cache_dir, tmp_path)


def serve(plugins: Path, cache_dir: str, tmp_path: Path) -> Iterator[str]:
    yield from serve_plugbus(plugins, "--log", str(tmp_path / "log"), "--cache-dir", cache_dir)


def test_pydantic_ai_through_the_otlp_http_exporter_to_plugbus_serve(served: str) -> None:
    exporter = OTLPSpanExporter(endpoint=f"{served}/v1/traces")  # protobuf, as the exporter sends by default
    run_instrumented(exporter)
    deadline = time.monotonic() + 20
    while True:
        q = urllib.parse.quote(json.dumps({"runs": {"limit": 10}}))
        with urllib.request.urlopen(f"{served}/plugins/agent-runs/query?q={q}") as answer:
            runs = json.load(answer)["answer"]["runs"]
        if runs and runs[0]["status"] == "completed" and runs[0]["agent"] == "weather-agent":
            break
        assert time.monotonic() < deadline, runs
        time.sleep(0.1)
    check_pydantic_run(runs[0])
    with urllib.request.urlopen(f"{served}/metrics") as answer:
        metrics = answer.read().decode()
    assert 'plugbus_otlp_requests_total{outcome="ok"}' in metrics
    assert "plugbus_otlp_duplicates_total 0" in metrics


def test_the_otel_agent_example_is_stopped_by_its_budget(served_example: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "otel-agent" / "agent.py"),
         "--plugbus", served_example, "--otlp", served_example],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "budget exceeded after" in out.stdout, out.stdout
    assert "tasks done within the budget" not in out.stdout
    assert "travel-agent: completed" in out.stdout, out.stdout
