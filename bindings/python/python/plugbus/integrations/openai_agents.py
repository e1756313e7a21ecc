"""An OpenAI Agents SDK trace processor that feeds a plugbus `EventBus`.

    from agents import add_trace_processor
    from plugbus import EventBus
    from plugbus.integrations.openai_agents import PlugbusTracingProcessor

    bus = EventBus(plugin_dir="plugins/dist")
    add_trace_processor(PlugbusTracingProcessor(bus))   # beside the SDK's own exporter
    # or set_trace_processors([PlugbusTracingProcessor(bus)]) to replace it

One trace is one agent run; its trace id is the correlation id of every
event from its spans:

| SDK | event | payload |
|---|---|---|
| trace start, then the first `agent` span (or the first event, or the trace's end) | `agent.run_started` | `agent`, `workflow` |
| trace end | `agent.run_finished` | `agent`, `workflow`, `status` = `"completed"`, `duration_ms` |
| trace end, after a run error | `agent.failed` | `agent`, `workflow`, `error`, `duration_ms` |
| `generation` / `response` span end | `model_responded` | `model`, `usage` {`prompt_tokens`, `completion_tokens`, `cache_read_tokens`, `cache_creation_tokens`}, `latency_ms`, `error`, `response_id`, `agent` |
| `function` span start | `tool.called` | `tool`, `call_id` (the span id), `args` (when already known), `agent` |
| `function` span end | `tool.result` | `tool`, `call_id`, `latency_ms`, `args`, `result`, `error`, `agent` |
| `handoff` span end | `agent.handoff` | `from_agent`, `to_agent`, `error`, `agent` |
| `guardrail` span end | `agent.guardrail` | `name`, `triggered`, `agent` |

Fields are present only when the span has them (the SDK leaves out inputs,
outputs and the response object when `trace_include_sensitive_data` is
off). The Responses API's span then carries the usage and, for OpenAI's own
endpoint, the response id, but no model: pass `default_model` (the model your
agents use) so that `model_responded` names one and cost-tracker can price
it; without it the call has no `model` and is priced at $0. The run's `agent` is the constructor's `agent`, else the first agent
that runs in the trace, else the workflow name; every other event's
`agent` is the agent whose span encloses it. The SDK fills a tool span's
input only after the span started, so `tool.called` rarely has `args`:
`tool.result` carries them. A run has failed when an `agent`, `task` or
`turn` span that is not inside a tool (an agent used as a tool may fail
without failing the run) ended with an error.

A run ended by `max_turns` is reported as failed ("Max turns exceeded") even
when an `error_handlers={"max_turns": ...}` handler recovered it and
`Runner.run` returned normally: the SDK (0.24) sets that error on the agent
span before it calls the handler, and nothing in the trace says whether the
handler recovered (a trace has no outcome; the span of a run the handler did
not recover ends with that same error, the SDK keeping it rather than adding
its own). A processor sees only the trace, so it cannot tell the two apart.

Every payload field is made JSON-safe (`_common.jsonable`: a tool's
arguments may hold `NaN` or a 30-digit number), so the plugins always get
the event; a token count that is not a number counts as 0.

The processor's methods are called synchronously by the SDK: they only
enqueue (`bus.emit`), never block, never raise (failures are counted in
`.failures` and logged once). `force_flush` and `shutdown` do not touch the
bus: it is the caller's to flush and shut down.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

from ._common import Guard, count, emit

try:
    from agents.tracing import TracingProcessor
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "plugbus.integrations.openai_agents needs the OpenAI Agents SDK (openai-agents): "
        "pip install 'plugbus[openai-agents]'"
    ) from _missing

if TYPE_CHECKING:
    from agents.tracing import Span, Trace

    from .._bus import EventBus

__all__ = ["PlugbusTracingProcessor"]

#: Traces tracked at once unless the constructor says.
DEFAULT_MAX_OPEN_TRACES = 10_000
#: Open spans tracked per trace.
MAX_OPEN_SPANS = 10_000

#: Span types whose error is the run's error (unless inside a tool).
_RUN_SPANS = frozenset(("agent", "task", "turn"))


class _Span:
    """An open span: what its end (and its children) need."""

    __slots__ = ("kind", "start", "agent", "in_tool")

    def __init__(self, kind: str, start: int, agent: str | None, in_tool: bool) -> None:
        self.kind = kind
        self.start = start
        self.agent = agent  # the nearest enclosing agent's name
        self.in_tool = in_tool


class _Trace:
    __slots__ = ("workflow", "agent", "start", "started", "error", "spans")

    def __init__(self, workflow: str | None, agent: str | None, start: int) -> None:
        self.workflow = workflow
        self.agent = agent
        self.start = start
        self.started = False
        self.error: str | None = None
        self.spans: dict[str, _Span] = {}


def _ms(start: int) -> float:
    return round((time.monotonic_ns() - start) / 1e6, 3)


def _span_error(error: Any) -> str | None:
    """A `SpanError` ({message, data}) as text: the message, and the
    underlying error from `data` when there is one."""
    if not error:
        return None
    if not isinstance(error, dict):
        return str(error)
    message = str(error.get("message") or "error")
    data = error.get("data")
    if isinstance(data, dict):
        detail = data.get("error") or data.get("message")
        if detail:
            return f"{message}: {detail}"
    return message


def _usage(usage: Any) -> dict[str, int] | None:
    """The SDK's usage (a span's `usage` dict, or a Responses API `usage`
    object) in the vocabulary's terms. A count that is not a number (a
    provider's `"n/a"`, NaN, ...) is 0 for the prompt and completion and
    left out for the cache counts: the call is still reported."""
    if usage is None:
        return None
    get = usage.get if isinstance(usage, dict) else lambda key, default=None: getattr(usage, key, default)
    prompt = get("input_tokens")
    completion = get("output_tokens")
    if prompt is None and completion is None:
        return None
    out = {"prompt_tokens": count(prompt) or 0, "completion_tokens": count(completion) or 0}
    details = get("input_tokens_details")
    if details is not None:
        dget = details.get if isinstance(details, dict) else lambda key, default=None: getattr(details, key, default)
        cached = count(dget("cached_tokens"))
        if cached is not None:
            out["cache_read_tokens"] = cached
        written = count(dget("cache_write_tokens"))
        if written is not None:
            out["cache_creation_tokens"] = written
    return out


def _args(value: Any) -> Any:
    """A tool's input: the SDK passes the model's JSON arguments as text;
    carried as that JSON when it parses, else as the text. (What the model
    wrote may have no form a plugin can read, `NaN` or a 30-digit number:
    `_emit` makes the payload JSON-safe.)"""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
            return value
    return value


class PlugbusTracingProcessor(TracingProcessor):
    """Maps the OpenAI Agents SDK's traces and spans to plugbus events (see
    the module's documentation).

    `agent`: the `agent` of every run (default: the first agent that runs).
    `capture_content`: include tool arguments and results (default True).
    `max_open_traces`: traces tracked at once; past it the oldest are
    dropped (counted in `evicted`).
    `default_model`: the `model` of a model call whose span names none (the
    Responses API with `trace_include_sensitive_data=False`), so that it can
    be priced; a model the span names is kept.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        agent: str | None = None,
        capture_content: bool = True,
        max_open_traces: int = DEFAULT_MAX_OPEN_TRACES,
        default_model: str | None = None,
    ) -> None:
        if max_open_traces < 1:
            raise ValueError("max_open_traces must be >= 1")
        self._bus = bus
        self._agent = agent
        self._capture = capture_content
        self._max_traces = max_open_traces
        self._default_model = default_model
        self._guard = Guard(type(self).__name__)
        self._lock = threading.Lock()
        self._traces: dict[str, _Trace] = {}
        self.evicted = 0

    @property
    def bus(self) -> EventBus:
        """The bus the events go to."""
        return self._bus

    @property
    def failures(self) -> int:
        """Calls that failed inside the processor (the SDK never saw it)."""
        return self._guard.failures

    @property
    def open_traces(self) -> int:
        """Traces being tracked now (0 once every trace has ended)."""
        return len(self._traces)

    # ---- state (under the lock) ----

    def _trace(self, trace_id: str, workflow: str | None = None) -> _Trace:
        state = self._traces.get(trace_id)
        if state is None:
            state = self._traces[trace_id] = _Trace(workflow, self._agent, time.monotonic_ns())
            while len(self._traces) > self._max_traces:
                del self._traces[next(iter(self._traces))]
                self.evicted += 1
        return state

    def _emit(self, name: str, data: dict[str, Any], trace_id: str) -> None:
        # Every field made JSON-safe; an event the plugins still miss is
        # counted in `.failures`.
        emit(self._bus, self._guard, name, data, trace_id)

    @staticmethod
    def _claim_start(state: _Trace | None) -> bool:
        """Whether this caller emits the trace's `agent.run_started` (once
        per trace, before its first event). Under the lock."""
        if state is None or state.started:
            return False
        state.started = True
        return True

    def _run_started(self, state: _Trace, trace_id: str) -> None:
        data: dict[str, Any] = {"agent": state.agent or state.workflow or "agent"}
        if state.workflow is not None:
            data["workflow"] = state.workflow
        self._emit("agent.run_started", data, trace_id)

    # ---- TracingProcessor ----

    def on_trace_start(self, trace: Trace) -> None:
        try:
            with self._lock:
                state = self._trace(trace.trace_id, trace.name)
                state.workflow = trace.name
        except Exception as e:
            self._guard.failed("on_trace_start", e)

    def on_trace_end(self, trace: Trace) -> None:
        try:
            with self._lock:
                state = self._traces.pop(trace.trace_id, None)
                start = self._claim_start(state)
            if state is None:
                return
            if start:
                self._run_started(state, trace.trace_id)
            data: dict[str, Any] = {"agent": state.agent or state.workflow or "agent"}
            if state.workflow is not None:
                data["workflow"] = state.workflow
            if state.error is None:
                data["status"] = "completed"
                data["duration_ms"] = _ms(state.start)
                self._emit("agent.run_finished", data, trace.trace_id)
            else:
                data["error"] = state.error
                data["duration_ms"] = _ms(state.start)
                self._emit("agent.failed", data, trace.trace_id)
        except Exception as e:
            self._guard.failed("on_trace_end", e)

    def on_span_start(self, span: Span[Any]) -> None:
        try:
            data = span.span_data
            kind = data.type
            trace_id = span.trace_id
            with self._lock:
                state = self._trace(trace_id)
                parent = state.spans.get(span.parent_id) if span.parent_id else None
                agent = parent.agent if parent is not None else None
                in_tool = parent is not None and (parent.in_tool or parent.kind == "function")
                if kind == "agent":
                    agent = getattr(data, "name", None) or agent
                    if state.agent is None and not in_tool:
                        state.agent = agent
                if len(state.spans) < MAX_OPEN_SPANS:
                    state.spans[span.span_id] = _Span(kind, time.monotonic_ns(), agent, in_tool)
                start = kind in ("agent", "function") and self._claim_start(state)
            if start:
                self._run_started(state, trace_id)
            if kind == "function":
                payload: dict[str, Any] = {"tool": getattr(data, "name", None) or "tool", "call_id": span.span_id}
                tool_input = getattr(data, "input", None)
                if self._capture and tool_input is not None:
                    payload["args"] = _args(tool_input)
                if agent is not None:
                    payload["agent"] = agent
                self._emit("tool.called", payload, trace_id)
        except Exception as e:
            self._guard.failed("on_span_start", e)

    def on_span_end(self, span: Span[Any]) -> None:
        try:
            data = span.span_data
            kind = data.type
            trace_id = span.trace_id
            error = _span_error(span.error)
            with self._lock:
                state = self._traces.get(trace_id)
                opened = state.spans.pop(span.span_id, None) if state is not None else None
                if (
                    state is not None
                    and error is not None
                    and kind in _RUN_SPANS
                    and state.error is None
                    and not (opened is not None and opened.in_tool)
                ):
                    state.error = error
                mapped = kind in ("generation", "response", "function", "handoff", "guardrail")
                start = mapped and self._claim_start(state)
            if not mapped:
                return
            if start and state is not None:
                self._run_started(state, trace_id)
            agent = opened.agent if opened is not None else None
            payload: dict[str, Any]
            if kind in ("generation", "response"):
                payload = self._model_responded(data, kind)
                if opened is not None:
                    payload["latency_ms"] = _ms(opened.start)
                if error is not None:
                    payload["error"] = error
                name = "model_responded"
            elif kind == "function":
                payload = {"tool": getattr(data, "name", None) or "tool", "call_id": span.span_id}
                if opened is not None:
                    payload["latency_ms"] = _ms(opened.start)
                if self._capture:
                    tool_input = getattr(data, "input", None)
                    if tool_input is not None:
                        payload["args"] = _args(tool_input)
                    output = getattr(data, "output", None)
                    if output is not None:
                        payload["result"] = output
                if error is not None:
                    payload["error"] = error
                name = "tool.result"
            elif kind == "handoff":
                payload = {"from_agent": getattr(data, "from_agent", None), "to_agent": getattr(data, "to_agent", None)}
                if error is not None:
                    payload["error"] = error
                name = "agent.handoff"
            else:
                payload = {"name": getattr(data, "name", None), "triggered": bool(getattr(data, "triggered", False))}
                name = "agent.guardrail"
            if agent is not None:
                payload["agent"] = agent
            self._emit(name, payload, trace_id)
        except Exception as e:
            self._guard.failed("on_span_end", e)

    def _model_responded(self, data: Any, kind: str) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        model = getattr(data, "model", None)
        usage = _usage(getattr(data, "usage", None))
        if kind == "response":
            response = getattr(data, "response", None)
            if response is not None:
                model = model or getattr(response, "model", None)
                if usage is None:
                    usage = _usage(getattr(response, "usage", None))
                response_id = getattr(response, "id", None)
            else:
                # Without sensitive data the SDK keeps the id alone (for
                # OpenAI's own endpoint).
                response_id = getattr(data, "_response_id", None)
            if isinstance(response_id, str):
                payload["response_id"] = response_id
        if not isinstance(model, str) or not model:
            model = self._default_model
        if isinstance(model, str):
            payload["model"] = model
        if usage is not None:
            payload["usage"] = usage
        return payload

    def force_flush(self) -> None:
        """Nothing is buffered here: events are on the bus already."""

    def shutdown(self) -> None:
        """Forgets open traces; the bus is left alone (it is the caller's)."""
        try:
            with self._lock:
                self._traces.clear()
        except Exception as e:
            self._guard.failed("shutdown", e)
