"""LangChain callback handlers that feed a plugbus `EventBus`.

    from plugbus import EventBus
    from plugbus.integrations.langchain import PlugbusCallbackHandler

    bus = EventBus(plugin_dir="plugins/dist")
    agent.invoke(inputs, config={"callbacks": [PlugbusCallbackHandler(bus, agent="support")]})

`PlugbusCallbackHandler` is a `BaseCallbackHandler` (for `invoke`, `stream`,
and also fine under `ainvoke`: it runs inline, never on an executor);
`AsyncPlugbusCallbackHandler` is an `AsyncCallbackHandler` for `ainvoke` /
`astream` (under a sync `invoke` LangChain would drive each of its
callbacks through an event loop of its own: use the sync one there).

Every run whose `parent_run_id` is None (the root chain, or a model or tool
called on its own) is one agent run; its run id is the correlation id of
every event of the runs below it:

| LangChain callback | event | payload |
|---|---|---|
| root start | `agent.run_started` | `agent` |
| root end | `agent.run_finished` | `agent`, `status` = `"completed"`, `duration_ms` |
| root error | `agent.failed` | `agent`, `error`, `duration_ms` |
| `on_chat_model_start` / `on_llm_start`, then `on_llm_end` | `model_responded` | `model`, `request_model`, `provider`, `usage` {`prompt_tokens`, `completion_tokens`, `cache_read_tokens`, `cache_creation_tokens`}, `latency_ms`, `finish_reasons`, `agent` |
| `on_llm_error` | `model_responded` | `model`, `request_model`, `provider`, `latency_ms`, `error`, `agent` |
| `on_tool_start` | `tool.called` | `tool`, `call_id` (the model's tool-call id, else the tool's run id), `args`, `agent` |
| `on_tool_end` / `on_tool_error` | `tool.result` | `tool`, `call_id`, `latency_ms`, `result`, `error`, `agent` |

Fields are present only when LangChain gives them. `agent` is the
constructor's `agent`, else the root run's name. A failed model call is a
`model_responded` with `error` (and no usage); a tool that returns an error
(`ToolMessage` with `status="error"`) is a `tool.result` with `error` too.

Every payload field is made JSON-safe (`_common.jsonable`), so the plugins
always get the event; a token count that is not a number counts as 0.
The handlers never raise into LangChain (their own failures, a bus that is
shut down included, are counted in `.failures` and logged once) and never
block: they only call `bus.emit`, never `flush` or `emit_and_wait`.
Latencies are measured with a monotonic clock between the start and end
callbacks. Open runs are tracked in bounded maps (`max_open_runs`), dropped
when their root ends.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ._common import Guard, count, emit, error_text, jsonable

try:
    from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "plugbus.integrations.langchain needs LangChain (langchain-core): pip install 'plugbus[langchain]'"
    ) from _missing

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import LLMResult

    from .._bus import EventBus

__all__ = ["AsyncPlugbusCallbackHandler", "PlugbusCallbackHandler"]

#: Runs tracked at once (across every root) unless the constructor says.
DEFAULT_MAX_OPEN_RUNS = 100_000


class _Root:
    """An agent run: a run with no parent."""

    __slots__ = ("key", "agent", "start", "members")

    def __init__(self, key: str, agent: str, start: int) -> None:
        self.key = key  # the run id as text: the correlation id
        self.agent = agent
        self.start = start
        self.members: set[int] = set()  # its open runs (`UUID.int`)


class _Call:
    """An open model or tool run, until its end callback."""

    __slots__ = ("root", "agent", "start", "name", "provider", "call_id")

    def __init__(
        self, root: str, agent: str | None, start: int, name: str | None, provider: str | None, call_id: str
    ) -> None:
        self.root = root  # the correlation id
        self.agent = agent
        self.start = start
        self.name = name  # the tool's name, or the requested model
        self.provider = provider
        self.call_id = call_id


def _ms(start: int) -> float:
    return round((time.monotonic_ns() - start) / 1e6, 3)


def _run_name(serialized: dict[str, Any] | None, kwargs: dict[str, Any], default: str) -> str:
    name = kwargs.get("name")
    if isinstance(name, str) and name:
        return name
    if serialized:
        name = serialized.get("name")
        if isinstance(name, str) and name:
            return name
        ids = serialized.get("id")
        if isinstance(ids, list) and ids and isinstance(ids[-1], str):
            return ids[-1]
    return default


def _summary(response: LLMResult, data: dict[str, Any]) -> str | None:
    """Puts the call's `usage` and `finish_reasons` into `data` and returns
    the responding model, in one pass over the generations: usage is, per
    prompt (the outer list), the `usage_metadata` of its first generation
    that has one, summed over the prompts (else the provider's
    `llm_output["token_usage"]`, older LLM classes); the model and the
    reasons come from `response_metadata` (else `generation_info`, else
    `llm_output`), the reasons from every generation.

    Only one generation per prompt counts: with several choices (`n` > 1)
    the partner packages (langchain-openai, ...) give each choice's message
    the whole response's usage, so summing them would count it `n` times
    (LangChain's own `UsageMetadataCallbackHandler` reads one too).

    A count that is not a number a plugin can use (`"n/a"`, NaN, beyond 64
    bits: see `count`) adds 0: the call is still reported."""
    prompt = completion = 0
    cache_read: int | None = None
    cache_creation: int | None = None
    found = False
    model: str | None = None
    reasons: list[str] = []
    for generations in response.generations:
        counted = False  # this prompt's usage is in: its other choices repeat it
        for generation in generations:
            message = getattr(generation, "message", None)
            if message is not None:
                usage = None if counted else getattr(message, "usage_metadata", None)  # AIMessage only
                metadata = message.response_metadata or generation.generation_info
            else:
                usage = None
                metadata = generation.generation_info
            if usage:
                found = counted = True
                prompt += count(usage.get("input_tokens")) or 0
                completion += count(usage.get("output_tokens")) or 0
                details = usage.get("input_token_details")
                if isinstance(details, dict):
                    read = count(details.get("cache_read"))
                    if read is not None:
                        cache_read = (cache_read or 0) + read
                    creation = count(details.get("cache_creation"))
                    if creation is not None:
                        cache_creation = (cache_creation or 0) + creation
            if metadata:
                if model is None:
                    name = metadata.get("model_name") or metadata.get("model")
                    if isinstance(name, str):
                        model = name
                reason = metadata.get("finish_reason") or metadata.get("stop_reason")
                if isinstance(reason, str):
                    reasons.append(reason)
    output = response.llm_output
    if output:
        if model is None:
            name = output.get("model_name") or output.get("model")
            if isinstance(name, str):
                model = name
        if not found:
            legacy = output.get("token_usage") or output.get("usage")
            if isinstance(legacy, dict):
                found = True
                prompt = count(legacy.get("prompt_tokens", legacy.get("input_tokens"))) or 0
                completion = count(legacy.get("completion_tokens", legacy.get("output_tokens"))) or 0
    if found:
        usage_out = {"prompt_tokens": prompt, "completion_tokens": completion}
        if cache_read is not None:
            usage_out["cache_read_tokens"] = cache_read
        if cache_creation is not None:
            usage_out["cache_creation_tokens"] = cache_creation
        data["usage"] = usage_out
    if reasons:
        data["finish_reasons"] = reasons
    return model


def _tool_output(output: Any) -> tuple[Any, str | None]:
    """A tool's (content, error): a ToolMessage (the tool was called with a
    tool call) carries the content, and status "error" is a handled tool
    error whose content is its message; any other output is the content."""
    content = getattr(output, "content", output)
    if getattr(output, "status", None) != "error":
        return content, None
    return content, content if isinstance(content, str) else str(jsonable(content))


class _Mapper:
    """The state and the mapping both handlers share. Every entry point
    catches its own failures (the `Guard` counts and logs them)."""

    def __init__(
        self, bus: EventBus, agent: str | None, capture_content: bool, max_open_runs: int, what: str
    ) -> None:
        if max_open_runs < 1:
            raise ValueError("max_open_runs must be >= 1")
        self.bus = bus
        self.agent = agent
        self.capture_content = capture_content
        self.max_open_runs = max_open_runs
        self.guard = Guard(what)
        self.evicted = 0
        self._lock = threading.Lock()
        # Keyed by `UUID.int`: hashing an int is native, a UUID's is Python.
        self._roots: dict[int, _Root] = {}
        # Every open run -> its root (roots map to themselves), or the text
        # of the parent standing in for a root never seen.
        self._root_of: dict[int, _Root | str] = {}
        self._calls: dict[int, _Call] = {}

    # ---- run tracking (under the lock) ----

    def _enter(self, run_id: UUID, parent_run_id: UUID | None, name: str) -> tuple[str, _Root | None, bool]:
        """Records `run_id` below its root; returns (correlation id, root,
        whether `run_id` is itself a new root). A parent never seen
        (evicted, or the handler was attached below the root) stands in as
        the root."""
        if parent_run_id is None:
            root = _Root(str(run_id), self.agent or name, time.monotonic_ns())
            self._roots[run_id.int] = root
            self._root_of[run_id.int] = root
            if len(self._root_of) > self.max_open_runs:
                self._bound()
            return root.key, root, True
        found = self._root_of.get(parent_run_id.int)
        if found is None:
            found = str(parent_run_id)
        self._root_of[run_id.int] = found
        if len(self._root_of) > self.max_open_runs:
            self._bound()
        if isinstance(found, str):
            return found, None, False
        found.members.add(run_id.int)
        return found.key, found, False

    def _bound(self) -> None:
        while len(self._root_of) > self.max_open_runs:
            oldest = next(iter(self._root_of))
            del self._root_of[oldest]
            # An evicted root's end emits nothing (its start is forgotten).
            self._roots.pop(oldest, None)
            self._calls.pop(oldest, None)
            self.evicted += 1

    def _leave(self, run_id: UUID) -> _Root | None:
        """Forgets `run_id`; when it is a root, every run still open below
        it too (an end never called: a crash, a cancelled task), and
        returns the root."""
        key = run_id.int
        found = self._root_of.pop(key, None)
        root = self._roots.pop(key, None)
        if root is not None:
            for member in root.members:
                self._root_of.pop(member, None)
                self._calls.pop(member, None)
        elif isinstance(found, _Root):
            found.members.discard(key)
        return root

    def _agent_of(self, root: _Root | None) -> str | None:
        return root.agent if root is not None else self.agent

    # ---- emitting ----

    def _emit(self, name: str, data: dict[str, Any], correlation_id: str) -> None:
        # Every field made JSON-safe; an event the plugins still miss is
        # counted in `.failures`.
        emit(self.bus, self.guard, name, data, correlation_id)

    def _run_started(self, root: _Root) -> None:
        self._emit("agent.run_started", {"agent": root.agent}, root.key)

    def _run_ended(self, root: _Root | None, error: BaseException | None) -> None:
        if root is None:
            return
        duration = _ms(root.start)
        if error is None:
            self._emit(
                "agent.run_finished",
                {"agent": root.agent, "status": "completed", "duration_ms": duration},
                root.key,
            )
        else:
            self._emit(
                "agent.failed", {"agent": root.agent, "error": error_text(error), "duration_ms": duration}, root.key
            )

    # ---- chains ----

    def chain_start(
        self, serialized: dict[str, Any] | None, run_id: UUID, parent_run_id: UUID | None, kwargs: dict[str, Any]
    ) -> None:
        try:
            if parent_run_id is None:
                name = _run_name(serialized, kwargs, "langchain")
            else:
                name = ""
            with self._lock:
                _, root, new = self._enter(run_id, parent_run_id, name)
            if new and root is not None:
                self._run_started(root)
        except Exception as e:
            self.guard.failed("on_chain_start", e)

    def chain_end(self, run_id: UUID, error: BaseException | None) -> None:
        try:
            with self._lock:
                root = self._leave(run_id)
            self._run_ended(root, error)
        except Exception as e:
            self.guard.failed("on_chain_error" if error is not None else "on_chain_end", e)

    # ---- models ----

    def model_start(
        self,
        serialized: dict[str, Any] | None,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
        where: str,
    ) -> None:
        try:
            params = kwargs.get("invocation_params") or {}
            model = params.get("model") or params.get("model_name")
            provider = None
            if metadata:
                model = model or metadata.get("ls_model_name")
                provider = metadata.get("ls_provider")
            name = _run_name(serialized, kwargs, "llm") if parent_run_id is None else ""
            start = time.monotonic_ns()
            with self._lock:
                root_id, root, new = self._enter(run_id, parent_run_id, name)
                self._calls[run_id.int] = _Call(
                    root_id,
                    self._agent_of(root),
                    start,
                    model if isinstance(model, str) else None,
                    provider if isinstance(provider, str) else None,
                    "",
                )
            if new and root is not None:
                self._run_started(root)
        except Exception as e:
            self.guard.failed(where, e)

    def model_end(self, response: LLMResult | None, run_id: UUID, error: BaseException | None) -> None:
        where = "on_llm_error" if error is not None else "on_llm_end"
        # Read the response first: a provider's odd result must cost its
        # usage at most, never the event or the end of the run, which the
        # bookkeeping below commits to emitting.
        data: dict[str, Any] = {}
        model = None
        if response is not None:
            try:
                model = _summary(response, data)
            except Exception as e:
                self.guard.failed(where, e)
                data = {}
        try:
            with self._lock:
                call = self._calls.pop(run_id.int, None)
                root = self._leave(run_id)
            if call is None:
                return  # its start was not seen (or evicted): nothing to pair it with
            model = model or call.name
            if model is not None:
                data["model"] = model
            if call.name is not None:
                data["request_model"] = call.name
            if call.provider is not None:
                data["provider"] = call.provider
            data["latency_ms"] = _ms(call.start)
            if error is not None:
                data["error"] = error_text(error)
            if call.agent is not None:
                data["agent"] = call.agent
            self._emit("model_responded", data, call.root)
            if root is not None:
                self._run_ended(root, error)
        except Exception as e:
            self.guard.failed(where, e)

    # ---- tools ----

    def tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        run_id: UUID,
        parent_run_id: UUID | None,
        inputs: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> None:
        try:
            tool = _run_name(serialized, kwargs, "tool")
            start = time.monotonic_ns()
            # The model's tool-call id when the tool ran from one (what OTel
            # calls `gen_ai.tool.call.id`), else the tool's run id; the end
            # and error callbacks reuse it from the `_Call`.
            model_call_id = kwargs.get("tool_call_id")
            call_id = model_call_id if isinstance(model_call_id, str) and model_call_id else str(run_id)
            with self._lock:
                root_id, root, new = self._enter(run_id, parent_run_id, tool)
                agent = self._agent_of(root)
                self._calls[run_id.int] = _Call(root_id, agent, start, tool, None, call_id)
            if new and root is not None:
                self._run_started(root)
            data: dict[str, Any] = {"tool": tool, "call_id": call_id}
            if self.capture_content:
                data["args"] = inputs if inputs is not None else input_str
            if agent is not None:
                data["agent"] = agent
            self._emit("tool.called", data, root_id)
        except Exception as e:
            self.guard.failed("on_tool_start", e)

    def tool_end(self, output: Any, run_id: UUID, error: BaseException | None) -> None:
        where = "on_tool_error" if error is not None else "on_tool_end"
        # Read the output before the bookkeeping (as `model_end` does): an
        # odd output costs its content at most, never the event.
        failed = error_text(error) if error is not None else None
        content = None
        if error is None:
            try:
                content, failed = _tool_output(output)
            except Exception as e:
                self.guard.failed(where, e)
        try:
            with self._lock:
                call = self._calls.pop(run_id.int, None)
                root = self._leave(run_id)
            if call is None:
                return
            data: dict[str, Any] = {"tool": call.name, "call_id": call.call_id, "latency_ms": _ms(call.start)}
            if error is None and self.capture_content:
                data["result"] = content
            if failed is not None:
                data["error"] = failed
            if call.agent is not None:
                data["agent"] = call.agent
            self._emit("tool.result", data, call.root)
            if root is not None:
                self._run_ended(root, error)
        except Exception as e:
            self.guard.failed(where, e)


class _Settings:
    """The handlers' shared surface."""

    _m: _Mapper

    @property
    def bus(self) -> EventBus:
        """The bus the events go to."""
        return self._m.bus

    @property
    def failures(self) -> int:
        """Callbacks that failed inside the handler (LangChain never saw it)."""
        return self._m.guard.failures

    @property
    def evicted(self) -> int:
        """Open runs dropped because more than `max_open_runs` were open."""
        return self._m.evicted

    @property
    def open_runs(self) -> int:
        """Runs being tracked now (0 once every root has ended)."""
        return len(self._m._root_of)

    # Callbacks the mapping does not use, skipped by LangChain before the
    # call. (Not `ignore_agent`: LangChain gates the tool callbacks on it.)
    @property
    def ignore_retriever(self) -> bool:
        return True

    @property
    def ignore_retry(self) -> bool:
        return True

    @property
    def ignore_custom_event(self) -> bool:
        return True


class PlugbusCallbackHandler(_Settings, BaseCallbackHandler):
    """A LangChain callback handler that emits plugbus events (see the
    module's documentation for the mapping).

    `agent`: the `agent` of every run (default: the root run's name).
    `capture_content`: include tool arguments and results (default True).
    `max_open_runs`: runs tracked at once; past it the oldest are dropped
    (counted in `evicted`).
    """

    raise_error: bool = False
    # Non-blocking, so it runs inline under ainvoke too (no executor hop).
    run_inline: bool = True

    def __init__(
        self,
        bus: EventBus,
        *,
        agent: str | None = None,
        capture_content: bool = True,
        max_open_runs: int = DEFAULT_MAX_OPEN_RUNS,
    ) -> None:
        super().__init__()
        self._m = _Mapper(bus, agent, capture_content, max_open_runs, type(self).__name__)

    def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.chain_start(serialized, run_id, parent_run_id, kwargs)

    def on_chain_end(
        self, outputs: dict[str, Any], *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._m.chain_end(run_id, None)

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._m.chain_end(run_id, error)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.model_start(serialized, run_id, parent_run_id, metadata, kwargs, "on_chat_model_start")

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.model_start(serialized, run_id, parent_run_id, metadata, kwargs, "on_llm_start")

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.model_end(response, run_id, None)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.model_end(None, run_id, error)

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.tool_start(serialized, input_str, run_id, parent_run_id, inputs, kwargs)

    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        self._m.tool_end(output, run_id, None)

    def on_tool_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._m.tool_end(None, run_id, error)


class AsyncPlugbusCallbackHandler(_Settings, AsyncCallbackHandler):
    """`PlugbusCallbackHandler` as an `AsyncCallbackHandler`, for
    `ainvoke` / `astream`: the same mapping and arguments, awaited on the
    event loop (it never awaits anything itself)."""

    raise_error: bool = False

    def __init__(
        self,
        bus: EventBus,
        *,
        agent: str | None = None,
        capture_content: bool = True,
        max_open_runs: int = DEFAULT_MAX_OPEN_RUNS,
    ) -> None:
        super().__init__()
        self._m = _Mapper(bus, agent, capture_content, max_open_runs, type(self).__name__)

    async def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.chain_start(serialized, run_id, parent_run_id, kwargs)

    async def on_chain_end(
        self,
        outputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.chain_end(run_id, None)

    async def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.chain_end(run_id, error)

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.model_start(serialized, run_id, parent_run_id, metadata, kwargs, "on_chat_model_start")

    async def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.model_start(serialized, run_id, parent_run_id, metadata, kwargs, "on_llm_start")

    async def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.model_end(response, run_id, None)

    async def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.model_end(None, run_id, error)

    async def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.tool_start(serialized, input_str, run_id, parent_run_id, inputs, kwargs)

    async def on_tool_end(
        self,
        output: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.tool_end(output, run_id, None)

    async def on_tool_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self._m.tool_end(None, run_id, error)

