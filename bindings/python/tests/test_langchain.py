"""plugbus.integrations.langchain with the real langchain-core: a real agent
loop (a root chain driving `GenericFakeChatModel` and real `@tool`s)
through the handlers, on a real bus with the real cost-tracker and
agent-runs plugins."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

if sys.version_info < (3, 11):  # langchain-core needs 3.11: not in a 3.10 venv
    pytest.skip("langchain-core needs Python 3.11", allow_module_level=True)

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.tools import BaseTool, ToolException, tool

from plugbus import Event, EventBus
from plugbus.integrations.langchain import AsyncPlugbusCallbackHandler, PlugbusCallbackHandler


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    time.sleep(0.02)
    return f"sunny in {city}"


@tool
async def aget_weather(city: str) -> str:
    """The weather in a city."""
    await asyncio.sleep(0.02)
    return f"sunny in {city}"


@tool
def broken_lookup(query: str) -> str:
    """A lookup service that is down."""
    raise RuntimeError("lookup service down")


def tool_turn(weather_tool: str = "get_weather") -> AIMessage:
    return AIMessage(
        content="",
        tool_calls=[
            {"name": weather_tool, "args": {"city": "Paris"}, "id": "call_1"},
            {"name": "broken_lookup", "args": {"query": "forecast"}, "id": "call_2"},
        ],
        usage_metadata={
            "input_tokens": 100,
            "output_tokens": 20,
            "total_tokens": 120,
            "input_token_details": {"cache_read": 40},
        },
        response_metadata={"model_name": "gpt-test-1", "finish_reason": "tool_calls"},
    )


def final_turn() -> AIMessage:
    return AIMessage(
        content="It is sunny in Paris.",
        usage_metadata={"input_tokens": 150, "output_tokens": 10, "total_tokens": 160},
        response_metadata={"model_name": "gpt-test-1", "finish_reason": "stop"},
    )


def agent_loop(llm: GenericFakeChatModel, tools: list[BaseTool], name: str = "support-agent") -> Runnable[str, str]:
    """A tool-calling agent loop as a root chain: the model, then each tool
    it asks for (a failing tool becomes an error ToolMessage, as
    LangGraph's ToolNode does), until it answers."""
    by_name = {t.name: t for t in tools}

    def run(question: str) -> str:
        messages: list[BaseMessage] = [HumanMessage(question)]
        while True:
            reply = llm.invoke(messages)
            messages.append(reply)
            if not isinstance(reply, AIMessage) or not reply.tool_calls:
                return str(reply.content)
            for call in reply.tool_calls:
                try:
                    messages.append(by_name[call["name"]].invoke(call))
                except Exception as e:
                    messages.append(ToolMessage(str(e), tool_call_id=call["id"] or "", status="error"))

    async def arun(question: str) -> str:
        messages: list[BaseMessage] = [HumanMessage(question)]
        while True:
            reply = await llm.ainvoke(messages)
            messages.append(reply)
            if not isinstance(reply, AIMessage) or not reply.tool_calls:
                return str(reply.content)
            for call in reply.tool_calls:
                try:
                    messages.append(await by_name[call["name"]].ainvoke(call))
                except Exception as e:
                    messages.append(ToolMessage(str(e), tool_call_id=call["id"] or "", status="error"))

    return RunnableLambda(run, afunc=arun, name=name)


@pytest.fixture
def bus(plugin_dir: Callable[..., Path], cache_dir: str) -> Iterator[EventBus]:
    with EventBus(
        plugin_dir=plugin_dir("cost-tracker", "agent-runs"), cache_dir=cache_dir, keep_history=True, history_size=1000
    ) as bus:
        yield bus


def of_run(bus: EventBus, run_id: uuid.UUID) -> list[Event]:
    return [e for e in bus.history(1000) if e.correlation_id == str(run_id)]


def by_tool(events: list[Event], name: str) -> dict[str, dict[str, Any]]:
    return {e.data["tool"]: e.data for e in events if e.type == name}


def stats(bus: EventBus, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in bus.plugins() if p["name"] == name)["stats"]
    return found


def check_agent_run(bus: EventBus, run_id: uuid.UUID, weather_tool: str) -> None:
    """The events of one run of `agent_loop` over tool_turn + final_turn,
    and what the plugins made of them."""
    events = of_run(bus, run_id)
    assert [e.type for e in events] == [
        "agent.run_started",
        "model_responded",
        "tool.called",
        "tool.result",
        "tool.called",
        "tool.result",
        "model_responded",
        "agent.run_finished",
    ]
    assert events[0].data == {"agent": "support-agent"}

    first, second = (e.data for e in events if e.type == "model_responded")
    assert first["model"] == "gpt-test-1"
    assert first["usage"] == {"prompt_tokens": 100, "completion_tokens": 20, "cache_read_tokens": 40}
    assert first["finish_reasons"] == ["tool_calls"]
    assert first["agent"] == "support-agent"
    assert first["provider"] == "genericfakechatmodel"  # LangChain's ls_provider
    assert second["usage"] == {"prompt_tokens": 150, "completion_tokens": 10}
    assert second["finish_reasons"] == ["stop"]
    for model_call in (first, second):
        assert isinstance(model_call["latency_ms"], float) and model_call["latency_ms"] >= 0
        assert "error" not in model_call

    called, results = by_tool(events, "tool.called"), by_tool(events, "tool.result")
    assert called[weather_tool]["args"] == {"city": "Paris"}
    assert called["broken_lookup"]["args"] == {"query": "forecast"}
    for name, call_id in ((weather_tool, "call_1"), ("broken_lookup", "call_2")):
        # call_id: the model's tool-call id, the same on the call and its result.
        assert called[name]["call_id"] == results[name]["call_id"] == call_id
        assert called[name]["agent"] == results[name]["agent"] == "support-agent"
    ok = results[weather_tool]
    assert ok["result"] == "sunny in Paris" and "error" not in ok
    assert ok["latency_ms"] >= 20  # the tool sleeps 20 ms: measured between start and end
    failed = results["broken_lookup"]
    assert failed["error"] == "RuntimeError: lookup service down" and "result" not in failed

    finished = events[-1].data
    assert finished["agent"] == "support-agent" and finished["status"] == "completed"
    assert finished["duration_ms"] >= ok["latency_ms"]

    bus.flush()
    answer = bus.query("agent-runs", {"run": str(run_id)})["answer"]
    assert answer["agent"] == "support-agent"
    assert answer["status"] == "completed"
    assert answer["tools"] == [weather_tool, "broken_lookup"]
    assert answer["tokens"] == 100 + 20 + 150 + 10
    assert answer["errors"] == ["RuntimeError: lookup service down"]
    assert answer["events"] == 8


def test_an_agent_loop_through_the_handler_is_one_run_for_the_plugins(bus: EventBus) -> None:
    handler = PlugbusCallbackHandler(bus)
    assert handler.raise_error is False
    run_id = uuid.uuid4()
    llm = GenericFakeChatModel(messages=iter([tool_turn(), final_turn()]))
    answer = agent_loop(llm, [get_weather, broken_lookup]).invoke(
        "weather in Paris?", config={"callbacks": [handler], "run_id": run_id}
    )
    assert answer == "It is sunny in Paris."
    check_agent_run(bus, run_id, "get_weather")
    # cost-tracker parsed both model calls (the usage as whole numbers).
    cost = stats(bus, "cost-tracker")
    assert cost["delivered"] == 2 and cost["errors"] == 0
    assert handler.failures == 0
    assert handler.open_runs == 0  # every run forgotten once its root ended


def test_the_async_handler_under_ainvoke_keeps_concurrent_runs_apart(bus: EventBus) -> None:
    handler = AsyncPlugbusCallbackHandler(bus)
    run_ids = [uuid.uuid4(), uuid.uuid4()]

    async def main() -> list[str]:
        return await asyncio.gather(
            *(
                agent_loop(
                    GenericFakeChatModel(messages=iter([tool_turn("aget_weather"), final_turn()])),
                    [aget_weather, broken_lookup],
                ).ainvoke("weather in Paris?", config={"callbacks": [handler], "run_id": run_id})
                for run_id in run_ids
            )
        )

    assert asyncio.run(main()) == ["It is sunny in Paris."] * 2
    # Both runs interleaved on one loop; each event went to its own root.
    for run_id in run_ids:
        check_agent_run(bus, run_id, "aget_weather")
    assert len(bus.history(1000)) == 16
    assert handler.failures == 0 and handler.open_runs == 0


def test_the_sync_handler_also_runs_inline_under_ainvoke(bus: EventBus) -> None:
    handler = PlugbusCallbackHandler(bus)
    assert handler.run_inline  # never on LangChain's executor threads
    run_id = uuid.uuid4()
    llm = GenericFakeChatModel(messages=iter([tool_turn("aget_weather"), final_turn()]))
    asyncio.run(
        agent_loop(llm, [aget_weather, broken_lookup]).ainvoke(
            "weather in Paris?", config={"callbacks": [handler], "run_id": run_id}
        )
    )
    check_agent_run(bus, run_id, "aget_weather")


def failing_model() -> Iterator[AIMessage]:
    yield tool_turn()
    raise RuntimeError("rate limited")


def test_a_failed_model_call_fails_the_run(bus: EventBus) -> None:
    handler = PlugbusCallbackHandler(bus, agent="billing")
    run_id = uuid.uuid4()
    llm = GenericFakeChatModel(messages=failing_model())
    with pytest.raises(RuntimeError, match="rate limited"):
        agent_loop(llm, [get_weather, broken_lookup]).invoke(
            "weather in Paris?", config={"callbacks": [handler], "run_id": run_id}
        )
    events = of_run(bus, run_id)
    assert [e.type for e in events][-2:] == ["model_responded", "agent.failed"]
    failed_call = events[-2].data
    assert failed_call["error"] == "RuntimeError: rate limited"
    assert "usage" not in failed_call and failed_call["latency_ms"] >= 0
    assert failed_call["agent"] == "billing"
    failed = events[-1].data
    assert failed["agent"] == "billing" and failed["error"] == "RuntimeError: rate limited"
    assert failed["duration_ms"] > 0
    assert events[0].data == {"agent": "billing"}  # the constructor's agent, not the chain's name

    bus.flush()
    answer = bus.query("agent-runs", {"run": str(run_id)})["answer"]
    assert answer["status"] == "failed" and answer["agent"] == "billing"
    assert "RuntimeError: rate limited" in answer["errors"]
    assert answer["tokens"] == 120  # the first call's; the failed one has none
    assert stats(bus, "cost-tracker")["errors"] == 0
    assert handler.failures == 0 and handler.open_runs == 0


def test_a_model_called_on_its_own_is_a_run_of_its_own(bus: EventBus) -> None:
    handler = PlugbusCallbackHandler(bus)
    run_id = uuid.uuid4()
    GenericFakeChatModel(messages=iter([final_turn()])).invoke(
        "hi", config={"callbacks": [handler], "run_id": run_id}
    )
    events = of_run(bus, run_id)
    assert [e.type for e in events] == ["agent.run_started", "model_responded", "agent.run_finished"]
    assert events[0].data == {"agent": "GenericFakeChatModel"}
    bus.flush()
    assert bus.query("agent-runs", {"run": str(run_id)})["answer"]["status"] == "completed"


def test_a_handled_tool_error_is_a_tool_result_with_an_error(bus: EventBus) -> None:
    @tool
    def flaky(query: str) -> str:
        """Fails in a way the tool reports to the model."""
        raise ToolException("quota exceeded")

    flaky.handle_tool_error = True  # the error goes back to the model as the result
    handler = PlugbusCallbackHandler(bus)
    run_id = uuid.uuid4()
    flaky.invoke(
        {"name": "flaky", "args": {"query": "x"}, "id": "call_9", "type": "tool_call"},
        config={"callbacks": [handler], "run_id": run_id},
    )
    result = next(e.data for e in of_run(bus, run_id) if e.type == "tool.result")
    assert result["error"] == "quota exceeded" and result["result"] == "quota exceeded"


def test_capture_content_off_leaves_arguments_and_results_out(bus: EventBus) -> None:
    handler = PlugbusCallbackHandler(bus, capture_content=False)
    run_id = uuid.uuid4()
    llm = GenericFakeChatModel(messages=iter([tool_turn(), final_turn()]))
    agent_loop(llm, [get_weather, broken_lookup]).invoke(
        "weather in Paris?", config={"callbacks": [handler], "run_id": run_id}
    )
    events = of_run(bus, run_id)
    for e in events:
        assert "args" not in e.data and "result" not in e.data
    assert by_tool(events, "tool.result")["broken_lookup"]["error"] == "RuntimeError: lookup service down"


def test_a_handler_on_a_shut_down_bus_never_raises_into_langchain(
    plugin_dir: Callable[..., Path], cache_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus(plugin_dir=plugin_dir("agent-runs"), cache_dir=cache_dir)
    bus.shutdown()
    handler = PlugbusCallbackHandler(bus)
    async_handler = AsyncPlugbusCallbackHandler(bus)
    # Were the handlers to raise, LangChain would re-raise it now.
    handler.raise_error = async_handler.raise_error = True
    caplog.set_level(logging.WARNING)
    llm = GenericFakeChatModel(messages=iter([tool_turn(), final_turn()]))
    assert agent_loop(llm, [get_weather, broken_lookup]).invoke(
        "weather in Paris?", config={"callbacks": [handler]}
    ) == "It is sunny in Paris."
    llm = GenericFakeChatModel(messages=iter([tool_turn("aget_weather"), final_turn()]))
    assert asyncio.run(
        agent_loop(llm, [aget_weather, broken_lookup]).ainvoke("weather in Paris?", config={"callbacks": [async_handler]})
    ) == "It is sunny in Paris."
    # Every emitting callback failed inside the handler and was counted ...
    assert handler.failures == 8 and async_handler.failures == 8
    # ... logged once per handler, and LangChain saw none of it.
    ours = [r for r in caplog.records if r.name == "plugbus.integrations"]
    assert len(ours) == 2 and "shut down" in ours[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("langchain")]
    assert handler.open_runs == 0 and async_handler.open_runs == 0


def test_open_runs_are_bounded_and_dropped_when_the_root_ends() -> None:
    bus = EventBus(keep_history=True)
    handler = PlugbusCallbackHandler(bus, max_open_runs=3)
    root, child, grandchild, lost = (uuid.uuid4() for _ in range(4))
    handler.on_chain_start({}, {}, run_id=root, name="outer")
    handler.on_chain_start({}, {}, run_id=child, parent_run_id=root)
    handler.on_tool_start({"name": "t"}, "x", run_id=grandchild, parent_run_id=child)
    assert handler.open_runs == 3
    # The child and grandchild never end (a crash, a cancelled task): the
    # root's end drops them too.
    handler.on_chain_end({}, run_id=root)
    assert handler.open_runs == 0
    # A tool whose parent was never seen reports under that parent's id.
    handler.on_tool_start({"name": "t"}, "x", run_id=lost, parent_run_id=child)
    assert bus.history(1)[0].correlation_id == str(child)
    # Past max_open_runs the oldest are dropped, counted.
    for _ in range(5):
        handler.on_chain_start({}, {}, run_id=uuid.uuid4(), name="r")
    assert handler.open_runs == 3 and handler.evicted == 3
    with pytest.raises(ValueError):
        PlugbusCallbackHandler(bus, max_open_runs=0)


def test_the_langchain_example_is_stopped_by_its_budget(plugin_dir: Callable[..., Path]) -> None:
    import subprocess

    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, str(root / "examples" / "langchain-agent" / "agent.py"), str(plugin_dir("cost-tracker", "agent-runs"))],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "budget exceeded after 3 of 6 questions ($0.0576)" in out.stdout, out.stdout
    assert out.stdout.count("weather-agent: completed, 2 model calls, 1 tool calls, 6000 tokens, $0.0192") == 3, out.stdout
