"""plugbus.integrations without the frameworks: never imported by `plugbus`,
a clear ImportError naming the extra when missing, and payload values the
plugins can always read. Then the LangChain handler on hand-built results
and single tool calls (skipped without langchain-core), no plugins needed."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from plugbus import EventBus
from plugbus.integrations._common import error_text, jsonable


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=False
    )


def test_importing_plugbus_imports_no_framework() -> None:
    done = python(
        """
        import sys
        import plugbus, plugbus.integrations
        print(sorted(m for m in ("langchain_core", "agents", "openai") if m in sys.modules))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "library", "extra"),
    [("langchain", "langchain_core", "plugbus[langchain]"), ("openai_agents", "agents", "plugbus[openai-agents]")],
)
def test_an_adapter_without_its_framework_names_the_extra(module: str, library: str, extra: str) -> None:
    done = python(
        f"""
        import sys
        sys.modules[{library!r}] = None  # as if it were not installed
        try:
            import plugbus.integrations.{module}
        except ImportError as e:
            print(e)
        else:
            print("imported")
        """
    )
    assert done.returncode == 0, done.stderr
    assert f"pip install '{extra}'" in done.stdout


def test_payload_values_are_always_something_plugins_can_read(
    plugin_dir: Callable[..., Path], cache_dir: str
) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    nested: list[object] = []
    deep = nested
    for _ in range(50):
        inner: list[object] = []
        deep.append(inner)
        deep = inner
    value = jsonable(
        {
            "nan": math.nan,
            "inf": -math.inf,
            "big": 2**70,
            "ok": [1, 2.5, True, None, "s"],
            3: (1, 2),
            "obj": Opaque(),
            "bad": Unprintable(),
            "set": {1},
            "deep": nested,
        }
    )
    assert value["nan"] is None and value["inf"] is None
    assert value["big"] == str(2**70)
    assert value["ok"] == [1, 2.5, True, None, "s"]
    assert value["3"] == [1, 2]
    assert value["obj"] == "opaque!" and value["bad"] == "<Unprintable>"
    assert value["set"] == "{1}"
    # The native bus refuses what has no JSON form; this reaches the plugins.
    with EventBus(plugin_dir=plugin_dir("console-logger"), cache_dir=cache_dir) as bus:
        bus.emit("tool.result", value)
        bus.flush()
        assert bus.unserialisable == 0
        assert bus.plugins()[0]["stats"]["delivered"] == 1
    assert error_text(ValueError("boom")) == "ValueError: boom"
    assert error_text(KeyError()) == "KeyError"



def test_text_without_utf8_form_is_made_readable(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    # json.loads makes lone surrogates from a model's "\\ud800"; no UTF-8
    # has them, so the bus would refuse the whole event.
    value = jsonable({"lone\ud800": ["x\udc00y", "\ud83d\ude00"], "ok": "caf\u00e9"})
    assert value == {"lone\ufffd": ["x\ufffdy", "\U0001f600"], "ok": "caf\u00e9"}  # a pair is its character
    with EventBus(plugin_dir=plugin_dir("console-logger"), cache_dir=cache_dir) as bus:
        bus.emit("tool.result", value)
        bus.flush()
        assert bus.unserialisable == 0
        assert bus.plugins()[0]["stats"]["delivered"] == 1


def test_an_event_the_plugins_cannot_get_is_an_adapter_failure(
    plugin_dir: Callable[..., Path], cache_dir: str
) -> None:
    from plugbus.integrations._common import Guard, emit

    guard = Guard("Adapter")
    with EventBus(plugin_dir=plugin_dir("console-logger"), cache_dir=cache_dir) as bus:
        emit(bus, guard, "tool.result", {"result": math.nan, "big": 2**70}, "run-1")
        assert guard.failures == 0 and bus.unserialisable == 0  # the payload is always made readable
        # ... but a correlation id without UTF-8 form cannot be: counted.
        emit(bus, guard, "tool.result", {}, "run-\ud800")
        assert guard.failures == 1
    # Without plugins there is nobody to miss it.
    emit(EventBus(), guard, "tool.result", {}, "run-\ud800")
    assert guard.failures == 1


# ---- the LangChain handler on hand-built results (real langchain-core) ----


def langchain_handlers() -> tuple[type[Any], type[Any]]:
    if sys.version_info < (3, 11):  # langchain-core needs 3.11: not in a 3.10 venv
        pytest.skip("langchain-core needs Python 3.11")
    pytest.importorskip("langchain_core")
    from plugbus.integrations.langchain import AsyncPlugbusCallbackHandler, PlugbusCallbackHandler

    return PlugbusCallbackHandler, AsyncPlugbusCallbackHandler


def drive(handler: Any, method: str, *args: Any, **kwargs: Any) -> None:
    """Calls a callback of either handler (the async one's on a loop)."""
    done = getattr(handler, method)(*args, **kwargs)
    if asyncio.iscoroutine(done):
        asyncio.run(done)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_langchain_usage_counts_one_choice_per_prompt(kind: str) -> None:
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    handler_type = langchain_handlers()[kind == "async"]

    def choice(usage: dict[str, Any] | None, reason: str) -> ChatGeneration:
        return ChatGeneration(
            message=AIMessage(
                content=reason,
                usage_metadata=usage,
                response_metadata={"model_name": "gpt-test-1", "finish_reason": reason},
            )
        )

    # As langchain-openai builds an n=3 response: every choice's message
    # carries the whole response's usage.
    whole = {
        "input_tokens": 100,
        "output_tokens": 30,
        "total_tokens": 130,
        "input_token_details": {"cache_read": 40, "cache_creation": 5},
    }
    second = {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}
    response = LLMResult(
        generations=[
            [choice(whole, "stop"), choice(whole, "length"), choice(whole, "stop")],
            # a prompt whose first choice has no usage: the first that has counts
            [choice(None, "stop"), choice(second, "stop"), choice(second, "stop")],
        ]
    )
    bus = EventBus(keep_history=True)
    handler = handler_type(bus)
    run_id = uuid.uuid4()
    drive(handler, "on_chat_model_start", {"name": "ChatOpenAI"}, [[], []], run_id=run_id)
    drive(handler, "on_llm_end", response, run_id=run_id)
    responded = next(e.data for e in bus.history(10) if e.type == "model_responded")
    assert responded["usage"] == {
        "prompt_tokens": 100 + 7,
        "completion_tokens": 30 + 3,
        "cache_read_tokens": 40,
        "cache_creation_tokens": 5,
    }
    # ... while every choice still has its finish reason.
    assert responded["finish_reasons"] == ["stop", "length", "stop", "stop", "stop", "stop"]
    assert responded["model"] == "gpt-test-1"
    assert handler.failures == 0 and handler.open_runs == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_langchain_tool_call_id_is_the_models_on_the_call_and_its_result(kind: str) -> None:
    from langchain_core.tools import tool

    handler_type = langchain_handlers()[kind == "async"]

    @tool
    def lookup(query: str) -> str:
        """Looks something up."""
        return f"found {query}"

    @tool
    def broken(query: str) -> str:
        """A lookup service that is down."""
        raise RuntimeError("down")

    bus = EventBus(keep_history=True)
    handler = handler_type(bus)

    def run(target: Any, value: Any, fails: bool = False) -> tuple[uuid.UUID, dict[str, Any], dict[str, Any]]:
        """Invokes the tool as a run of its own; its run id, tool.called, tool.result."""
        run_id = uuid.uuid4()
        config: Any = {"callbacks": [handler], "run_id": run_id}
        try:
            if kind == "async":
                asyncio.run(target.ainvoke(value, config=config))
            else:
                target.invoke(value, config=config)
        except RuntimeError:
            assert fails
        else:
            assert not fails
        events = [e for e in bus.history(100) if e.correlation_id == str(run_id)]
        ended = "agent.failed" if fails else "agent.run_finished"
        assert [e.type for e in events] == ["agent.run_started", "tool.called", "tool.result", ended]
        return run_id, events[1].data, events[2].data

    # Called from a model's tool call (LangChain passes `tool_call_id=`): its id.
    _, called, result = run(lookup, {"name": "lookup", "args": {"query": "x"}, "id": "call_7", "type": "tool_call"})
    assert called["call_id"] == result["call_id"] == "call_7"
    assert result["result"] == "found x"
    # ... on a tool that raises too (on_tool_error).
    _, called, result = run(
        broken, {"name": "broken", "args": {"query": "x"}, "id": "call_8", "type": "tool_call"}, fails=True
    )
    assert called["call_id"] == result["call_id"] == "call_8"
    assert result["error"] == "RuntimeError: down"
    # Called with plain arguments (no tool call): the tool's own run id.
    run_id, called, result = run(lookup, {"query": "y"})
    assert called["call_id"] == result["call_id"] == str(run_id)  # the tool is the root here
    assert handler.failures == 0 and handler.open_runs == 0


@pytest.mark.parametrize(
    ("token_usage", "usage"),
    [
        ({"prompt_tokens": "n/a", "completion_tokens": 3}, {"prompt_tokens": 0, "completion_tokens": 3}),
        ({"prompt_tokens": None, "completion_tokens": {"x": 1}}, {"prompt_tokens": 0, "completion_tokens": 0}),
        ({"prompt_tokens": math.nan, "completion_tokens": math.inf}, {"prompt_tokens": 0, "completion_tokens": 0}),
        ({"prompt_tokens": 2**70, "completion_tokens": 3}, {"prompt_tokens": 0, "completion_tokens": 3}),
    ],
)
def test_langchain_unreadable_usage_loses_neither_the_call_nor_the_run(
    plugin_dir: Callable[..., Path], cache_dir: str, token_usage: dict[str, Any], usage: dict[str, int]
) -> None:
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, LLMResult

    handler_type = langchain_handlers()[0]
    with EventBus(
        plugin_dir=plugin_dir("cost-tracker", "agent-runs"), cache_dir=cache_dir, keep_history=True
    ) as bus:
        handler = handler_type(bus)
        run_id = uuid.uuid4()
        handler.on_chat_model_start({"name": "m"}, [[]], run_id=run_id, invocation_params={"model": "gpt-4o"})
        response = LLMResult(
            generations=[[ChatGeneration(message=AIMessage(content="x"))]], llm_output={"token_usage": token_usage}
        )
        handler.on_llm_end(response, run_id=run_id)
        bus.flush()
        events = [e for e in bus.history(10) if e.source == "host"]  # not cost-tracker's cost.priced
        assert [e.type for e in events] == ["agent.run_started", "model_responded", "agent.run_finished"]
        assert all(e.seq is not None for e in events)  # every one reached the plugins
        assert events[1].data["usage"] == usage
        assert handler.failures == 0 and handler.open_runs == 0
        answer = bus.query("agent-runs", {"run": str(run_id)})["answer"]
        assert answer["status"] == "completed" and answer["model_calls"] == 1
        assert next(p for p in bus.plugins() if p["name"] == "cost-tracker")["stats"]["errors"] == 0


def test_langchain_text_without_utf8_form_still_reaches_the_plugins(
    plugin_dir: Callable[..., Path], cache_dir: str
) -> None:
    handler_type = langchain_handlers()[0]
    with EventBus(plugin_dir=plugin_dir("agent-runs"), cache_dir=cache_dir, keep_history=True) as bus:
        handler = handler_type(bus)
        run_id = uuid.uuid4()
        handler.on_tool_start({"name": "look\ud800up"}, "q\udc00", run_id=run_id)
        handler.on_tool_end("found \ud800 it", run_id=run_id)
        bus.flush()
        events = bus.history(10)
        assert [e.type for e in events] == ["agent.run_started", "tool.called", "tool.result", "agent.run_finished"]
        assert all(e.seq is not None for e in events) and bus.unserialisable == 0
        assert events[1].data["args"] == "q\ufffd" and events[2].data["result"] == "found \ufffd it"
        assert handler.failures == 0
        answer = bus.query("agent-runs", {"run": str(run_id)})["answer"]
        assert answer["tools"] == ["look\ufffdup"] and answer["status"] == "completed"


def test_langchain_a_response_that_cannot_be_read_still_ends_the_run() -> None:
    from langchain_core.outputs import LLMResult

    handler_type = langchain_handlers()[0]
    bus = EventBus(keep_history=True)
    handler = handler_type(bus)
    run_id = uuid.uuid4()
    handler.on_chat_model_start({"name": "m"}, [[]], run_id=run_id, invocation_params={"model": "gpt-4o"})
    # Not what LangChain promises: reading it raises inside the handler.
    handler.on_llm_end(LLMResult.model_construct(generations=5, llm_output=None), run_id=run_id)
    # Counted, and only the usage is lost: the call and the run's end are not.
    assert handler.failures == 1
    assert [e.type for e in bus.history(10)] == ["agent.run_started", "model_responded", "agent.run_finished"]
    responded = bus.history(10)[1].data
    assert responded["model"] == "gpt-4o" and "usage" not in responded and "error" not in responded
    assert handler.open_runs == 0
