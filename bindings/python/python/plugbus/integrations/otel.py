"""An OpenTelemetry SDK span exporter that feeds a plugbus `EventBus`
in-process: finished spans go to the same Rust GenAI mapping as
`plugbus serve`'s `POST /v1/traces` (docs/opentelemetry.md), with no HTTP.

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from plugbus import EventBus
    from plugbus.integrations.otel import PlugbusSpanExporter

    bus = EventBus(plugin_dir="plugins/dist")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(PlugbusSpanExporter(bus)))
    # then any OTel-instrumented framework on this provider, e.g. pydantic-ai:
    # Agent.instrument_all(InstrumentationSettings(tracer_provider=provider))

Spans are encoded exactly as the OTLP/HTTP exporter encodes them (the
`opentelemetry-exporter-otlp-proto-common` encoder) and handed to the bus:
GenAI spans become `model_responded`, `tool.called`/`tool.result` and
`agent.*` events; other spans are dropped unless `all_spans=True`
(`otel.span` events). Span ids make event ids, so a span exported twice is
published once. With a log, `export` returns once the events are durable:
use it under a `BatchSpanProcessor` (its own thread), not a
`SimpleSpanProcessor`, so the instrumented code never waits for a sync.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "plugbus.integrations.otel needs the OpenTelemetry SDK and the OTLP protobuf encoder "
        "(opentelemetry-sdk, opentelemetry-exporter-otlp-proto-common): pip install 'plugbus[otel]'"
    ) from _missing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

    from .._bus import EventBus

_log = logging.getLogger("plugbus.integrations.otel")


class PlugbusSpanExporter(SpanExporter):
    """Hands finished spans to `bus`'s GenAI mapping (see the module doc).

    `export` never raises: a bus that is shut down or a body the mapping
    refuses is logged and answered `FAILURE` (the SDK then drops the batch).
    `last_export` holds the summary of the latest export: spans, mapped,
    dropped, rejected (each with its reason), published, duplicates.
    """

    def __init__(self, bus: EventBus, *, all_spans: bool = False) -> None:
        if bus._native is None:
            raise ValueError(
                "PlugbusSpanExporter needs an EventBus with plugin_dir or log_dir: "
                "the GenAI mapping runs in the bus's native half"
            )
        self._bus = bus
        self._all_spans = all_spans
        self._shut_down = False
        self.last_export: dict[str, Any] | None = None
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shut_down:
            return SpanExportResult.FAILURE
        native = self._bus._native
        if native is None:
            self.failures += 1
            _log.warning("plugbus: %d spans not exported: the bus has no native half (shut down?)", len(spans))
            return SpanExportResult.FAILURE
        try:
            body = encode_spans(spans).SerializeToString()
            summary: dict[str, Any] = json.loads(native.export_otlp(body, "application/x-protobuf", self._all_spans))
        except Exception as exc:  # never into the SDK's worker thread
            self.failures += 1
            _log.warning("plugbus: %d spans not exported: %s", len(spans), exc)
            return SpanExportResult.FAILURE
        self.last_export = summary
        for rejected in summary["rejected"][:3]:
            _log.warning("plugbus: span %s refused: %s", rejected["span"], rejected["reason"])
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        # The bus is the caller's to shut down; this exporter only stops.
        self._shut_down = True

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        # Every export is synchronous: nothing is held here.
        return True
