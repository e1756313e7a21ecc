"""The otlp-export plugin: agent events in, OTLP/HTTP spans out to a real
collector endpoint, decoded with the OpenTelemetry Python proto types."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from plugbus import EventBus


class Collector:
    """A loopback OTLP/HTTP endpoint that keeps every request body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                length = int(self.headers.get("content-length", "0"))
                bodies.append(self.rfile.read(length))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()


def decode(body: bytes) -> ExportTraceServiceRequest:
    """OTLP JSON into the proto type: OTLP JSON writes trace and span ids as
    hex where protobuf's JSON mapping has base64, the one difference."""
    doc = json.loads(body)
    for resource in doc["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(doc, ExportTraceServiceRequest())


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind != "array_value" else [v.string_value for v in kv.value.array_value.values]
    return out


def test_an_agent_run_becomes_one_trace_of_genai_spans(
    plugin_dir: Callable[..., Path], cache_dir: str, collector: Collector
) -> None:
    plugins = plugin_dir(
        otlp_export=(
            f'[config]\nendpoint = "http://127.0.0.1:{collector.port}/v1/traces"\nservice_name = "support-bot"\n'
            f'batch_spans = "100"\n[http]\nallow = ["http://127.0.0.1:{collector.port}"]\n'
        )
    )
    with EventBus(plugin_dir=plugins, cache_dir=cache_dir) as bus:
        run = "run-7"
        bus.emit("agent.run_started", {"agent": "support-bot"}, correlation_id=run)
        bus.emit(
            "model_responded",
            {
                "model": "gpt-4.1-mini",
                "provider": "openai",
                "usage": {"prompt_tokens": 1000, "completion_tokens": 200},
                "latency_ms": 850,
                "finish_reasons": ["tool_calls"],
            },
            correlation_id=run,
        )
        bus.emit("tool.called", {"tool": "search_docs", "call_id": "call-1", "args": {"q": "refund"}}, correlation_id=run)
        bus.emit("tool.result", {"tool": "search_docs", "call_id": "call-1", "result": "..."}, correlation_id=run)
        bus.emit("model_responded", {"model": "gpt-4.1-mini", "usage": {"prompt_tokens": 1500, "completion_tokens": 90}}, correlation_id=run)
        bus.emit("agent.run_finished", {"agent": "support-bot", "status": "completed"}, correlation_id=run)
        bus.flush()
        export = next(p for p in bus.plugins() if p["name"] == "otlp-export")
        assert export["http"]["sent"] == 1, export

    assert len(collector.bodies) == 1, "the run's end sends its spans, once"
    request = decode(collector.bodies[0])
    resource = request.resource_spans[0]
    assert attributes(resource.resource)["service.name"] == "support-bot"
    spans = list(resource.scope_spans[0].spans)
    assert [s.name for s in spans] == [
        "chat gpt-4.1-mini",
        "execute_tool search_docs",
        "chat gpt-4.1-mini",
        "invoke_agent support-bot",
    ]
    root = spans[-1]
    assert root.parent_span_id == b""
    assert len(root.trace_id) == 16 and len(root.span_id) == 8
    for child in spans[:-1]:
        assert child.trace_id == root.trace_id
        assert child.parent_span_id == root.span_id
        assert child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= root.end_time_unix_nano
    first = attributes(spans[0])
    assert first["gen_ai.operation.name"] == "chat"
    assert first["gen_ai.provider.name"] == "openai"
    assert first["gen_ai.usage.input_tokens"] == 1000
    assert first["gen_ai.usage.output_tokens"] == 200
    assert first["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert first["gen_ai.conversation.id"] == "run-7"
    assert spans[0].end_time_unix_nano - spans[0].start_time_unix_nano == 850_000_000
    tool = attributes(spans[1])
    assert (tool["gen_ai.tool.name"], tool["gen_ai.tool.call.id"]) == ("search_docs", "call-1")
    assert attributes(root)["gen_ai.operation.name"] == "invoke_agent"


def test_a_collector_that_is_down_costs_counted_bounded_drops(
    plugin_dir: Callable[..., Path], cache_dir: str, collector: Collector
) -> None:
    port = collector.port
    collector.server.shutdown()
    collector.server.server_close()
    plugins = plugin_dir(
        otlp_export=(
            f'[config]\nendpoint = "http://127.0.0.1:{port}/v1/traces"\nbatch_spans = "5"\nmax_pending = "20"\n'
            f'[http]\nallow = ["http://127.0.0.1:{port}"]\n'
        )
    )
    with EventBus(plugin_dir=plugins, cache_dir=cache_dir) as bus:
        for _ in range(50):
            bus.emit("model_responded", {"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}, correlation_id="r")
        bus.flush()
        export = next(p for p in bus.plugins() if p["name"] == "otlp-export")
        # One failed attempt, then none until batch_ms of event time passes.
        assert export["http"]["failed"] == 1, export
        assert export["stats"]["errors"] == 0 and export["stats"]["failures"]["trap"] == 0
        answer = bus.query("otlp-export", {})["answer"]
        assert (answer["pending"], answer["dropped"], answer["sent"]) == (20, 30, 0), answer
