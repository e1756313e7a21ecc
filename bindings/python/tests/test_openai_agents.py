"""plugbus.integrations.openai_agents with the real OpenAI Agents SDK:
`Runner.run` on a fake `Model` (no network: the SDK's default trace
exporter is replaced, and any socket connect fails the test), real
`@function_tool`s, a guardrail and a handoff, through the processor on a
real bus with the real cost-tracker and agent-runs plugins."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

if sys.version_info < (3, 11):  # the SDK's dependencies need 3.11: not in a 3.10 venv
    pytest.skip("openai-agents is installed for Python 3.11+ only", allow_module_level=True)

from agents import (
    Agent,
    GuardrailFunctionOutput,
    InputGuardrailTripwireTriggered,
    MaxTurnsExceeded,
    ModelResponse,
    RunConfig,
    RunErrorHandlerResult,
    Runner,
    Usage,
    function_tool,
    input_guardrail,
    set_trace_processors,
)
from agents.models.interface import Model
from agents.tracing import function_span, gen_trace_id, generation_span, response_span, trace
from openai.types.responses import (
    Response,
    ResponseFunctionToolCall,
    ResponseOutputItem,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseUsage,
)
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from plugbus import Event, EventBus
from plugbus.integrations.openai_agents import PlugbusTracingProcessor

Turn = tuple[list[ResponseOutputItem], int, int] | Exception


class FakeModel(Model):
    """A scripted model: each call takes the next turn (output items and
    token counts, or an exception to raise), inside the span the SDK's own
    models open: a `generation` span (Chat Completions: model and usage on
    the span) or a `response` span (Responses API: the response object, or,
    as `response-redacted`, what the SDK keeps without sensitive data: the
    usage and the response id, no model)."""

    def __init__(self, turns: list[Turn], span: str = "generation") -> None:
        self.turns = list(turns)
        self.span = span

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        turn = self.turns.pop(0)
        if self.span == "generation":
            with generation_span(model="gpt-fake", model_config={}) as gen:
                if isinstance(turn, Exception):
                    gen.set_error({"message": "Error", "data": {"error": str(turn)}})
                    raise turn
                output, prompt, completion = turn
                gen.span_data.usage = {
                    "requests": 1,
                    "input_tokens": prompt,
                    "output_tokens": completion,
                    "total_tokens": prompt + completion,
                    "input_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0},
                }
                return self._response(output, prompt, completion)
        with response_span() as resp:
            if isinstance(turn, Exception):
                resp.set_error({"message": "Error", "data": {"error": str(turn)}})
                raise turn
            output, prompt, completion = turn
            if self.span == "response-redacted":
                resp.span_data.usage = {
                    "requests": 1,
                    "input_tokens": prompt,
                    "output_tokens": completion,
                    "total_tokens": prompt + completion,
                    "input_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 0},
                    "output_tokens_details": {"reasoning_tokens": 0},
                }
                resp.span_data._response_id = "resp_1"
                return self._response(output, prompt, completion)
            resp.span_data.response = Response(
                id="resp_1",
                created_at=0,
                model="gpt-fake",
                object="response",
                output=output,
                tool_choice="auto",
                tools=[],
                top_p=None,
                parallel_tool_calls=True,
                usage=ResponseUsage(
                    input_tokens=prompt,
                    output_tokens=completion,
                    total_tokens=prompt + completion,
                    input_tokens_details=InputTokensDetails(cached_tokens=5, cache_write_tokens=0),
                    output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
                ),
            )
            return self._response(output, prompt, completion)

    @staticmethod
    def _response(output: list[ResponseOutputItem], prompt: int, completion: int) -> ModelResponse:
        usage = Usage(requests=1, input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)
        return ModelResponse(output=output, usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


def call(name: str, args: dict[str, Any], call_id: str) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        type="function_call", name=name, arguments=json.dumps(args), call_id=call_id, id=f"fc_{call_id}"
    )


def say(text: str) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id="msg_1",
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=[])],
    )


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@function_tool
def broken_lookup(query: str) -> str:
    """A lookup service that is down."""
    raise RuntimeError("lookup service down")


def guardrail(tripped: bool) -> Any:
    @input_guardrail(name="no_secrets")
    async def no_secrets(ctx: Any, agent: Any, input: Any) -> GuardrailFunctionOutput:
        return GuardrailFunctionOutput(output_info=None, tripwire_triggered=tripped)

    return no_secrets


@pytest.fixture
def bus(plugin_dir: Callable[..., Path], cache_dir: str) -> Iterator[EventBus]:
    with EventBus(
        plugin_dir=plugin_dir("cost-tracker", "agent-runs"), cache_dir=cache_dir, keep_history=True, history_size=1000
    ) as bus:
        yield bus


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """A dummy key, and any attempt to connect anywhere recorded (and
    refused): the test fails if there was one."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-not-a-key")
    attempts: list[object] = []

    def connect(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("no network in the tests")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    yield attempts
    assert attempts == []


@pytest.fixture
def processor(bus: EventBus, no_network: list[object]) -> Iterator[PlugbusTracingProcessor]:
    processor = PlugbusTracingProcessor(bus)
    set_trace_processors([processor])  # the SDK's OpenAI exporter is gone
    yield processor
    set_trace_processors([])


def run(agent: Agent[Any], trace_id: str, workflow: str = "support") -> Any:
    config = RunConfig(workflow_name=workflow, trace_id=trace_id)
    return asyncio.run(Runner.run(agent, "weather in Paris?", run_config=config)).final_output


def of_trace(bus: EventBus, trace_id: str) -> list[Event]:
    bus.flush()
    events = bus.history(1000)
    assert all(e.correlation_id == trace_id for e in events)
    return events


def stats(bus: EventBus, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in bus.plugins() if p["name"] == name)["stats"]
    return found


@pytest.mark.parametrize("span", ["generation", "response"])
def test_a_run_with_tools_a_guardrail_and_a_handoff_is_one_run_for_the_plugins(
    bus: EventBus, processor: PlugbusTracingProcessor, span: str
) -> None:
    model = FakeModel(
        [
            ([call("get_weather", {"city": "Paris"}, "c1"), call("broken_lookup", {"query": "forecast"}, "c2")], 100, 20),
            ([call("transfer_to_billing", {}, "c3")], 150, 10),
            ([say("Sunny in Paris; billing says hi.")], 200, 5),
        ],
        span=span,
    )
    billing = Agent(name="billing", instructions="Billing questions.", model=model)
    triage = Agent(
        name="triage",
        instructions="Route.",
        model=model,
        tools=[get_weather, broken_lookup],
        handoffs=[billing],
        input_guardrails=[guardrail(False)],
    )
    trace_id = gen_trace_id()
    assert run(triage, trace_id) == "Sunny in Paris; billing says hi."

    events = of_trace(bus, trace_id)
    names = [e.type for e in events]
    assert names[0] == "agent.run_started" and names[-1] == "agent.run_finished"
    assert sorted(names[1:-1]) == sorted(
        ["agent.guardrail", "agent.handoff"] + ["model_responded"] * 3 + ["tool.called", "tool.result"] * 2
    )
    assert events[0].data == {"agent": "triage", "workflow": "support"}

    models = [e.data for e in events if e.type == "model_responded"]
    assert [m["usage"]["prompt_tokens"] for m in models] == [100, 150, 200]
    assert [m["usage"]["completion_tokens"] for m in models] == [20, 10, 5]
    assert all(m["usage"]["cache_read_tokens"] == 5 for m in models)
    assert [m["agent"] for m in models] == ["triage", "triage", "billing"]
    for m in models:
        assert m["model"] == "gpt-fake" and m["latency_ms"] >= 0 and "error" not in m
    if span == "response":
        assert all(m["response_id"] == "resp_1" for m in models)

    called = {e.data["tool"]: e for e in events if e.type == "tool.called"}
    results = {e.data["tool"]: e for e in events if e.type == "tool.result"}
    for name in ("get_weather", "broken_lookup"):
        assert called[name].data["call_id"] == results[name].data["call_id"]
        assert called[name].data["call_id"].startswith("span_")
        assert called[name].seq is not None and results[name].seq is not None
        assert called[name].seq < results[name].seq  # the call before its result
        assert results[name].data["agent"] == "triage" and results[name].data["latency_ms"] >= 0
    ok = results["get_weather"].data
    assert ok["args"] == {"city": "Paris"} and ok["result"] == "sunny in Paris" and "error" not in ok
    failed = results["broken_lookup"].data
    assert failed["args"] == {"query": "forecast"}
    assert failed["error"].startswith("Error running tool")

    handoff = next(e.data for e in events if e.type == "agent.handoff")
    assert handoff["from_agent"] == "triage" and handoff["to_agent"] == "billing"
    assert next(e.data for e in events if e.type == "agent.guardrail") == {
        "name": "no_secrets",
        "triggered": False,
        "agent": "triage",
    }
    finished = events[-1].data
    assert finished["agent"] == "triage" and finished["status"] == "completed" and finished["duration_ms"] > 0

    answer = bus.query("agent-runs", {"run": trace_id})["answer"]
    assert answer["agent"] == "triage" and answer["status"] == "completed"
    assert sorted(answer["tools"]) == ["broken_lookup", "get_weather"]
    assert answer["tokens"] == 100 + 20 + 150 + 10 + 200 + 5
    assert answer["errors"] == [failed["error"]]
    assert stats(bus, "cost-tracker")["delivered"] == 3 and stats(bus, "cost-tracker")["errors"] == 0
    assert processor.failures == 0 and processor.open_traces == 0


@pytest.mark.parametrize("default_model", [None, "gpt-4.1"])
def test_a_responses_api_call_without_sensitive_data_takes_the_default_model(
    bus: EventBus, no_network: list[object], default_model: str | None
) -> None:
    # The SDK's Responses model keeps no response object (so no model) when
    # trace_include_sensitive_data is off: only the usage and the id.
    if default_model is None:
        processor = PlugbusTracingProcessor(bus)
    else:
        processor = PlugbusTracingProcessor(bus, default_model=default_model)
    set_trace_processors([processor])
    try:
        model = FakeModel([([say("Hi.")], 1000, 100)], "response-redacted")
        agent = Agent(name="triage", instructions="Route.", model=model)
        trace_id = gen_trace_id()
        config = RunConfig(workflow_name="support", trace_id=trace_id, trace_include_sensitive_data=False)
        assert asyncio.run(Runner.run(agent, "hi", run_config=config)).final_output == "Hi."
    finally:
        set_trace_processors([])
    events = of_trace(bus, trace_id)
    model_call = next(e.data for e in events if e.type == "model_responded")
    assert model_call["usage"] == {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "cache_read_tokens": 5,
        "cache_creation_tokens": 0,
    }
    assert model_call["response_id"] == "resp_1"
    priced = [e.data for e in events if e.type == "cost.priced"]
    if default_model is None:
        assert "model" not in model_call and priced == []
    else:
        assert model_call["model"] == "gpt-4.1"
        assert len(priced) == 1 and priced[0]["priced_as"] == "gpt-4.1" and priced[0]["cost_usd"] > 0
    assert processor.failures == 0


def test_the_default_model_never_replaces_the_spans_own(bus: EventBus, no_network: list[object]) -> None:
    processor = PlugbusTracingProcessor(bus, default_model="gpt-4.1")
    set_trace_processors([processor])
    try:
        agent = Agent(name="triage", instructions="Route.", model=FakeModel([([say("Hi.")], 10, 1)], "response"))
        trace_id = gen_trace_id()
        assert run(agent, trace_id) == "Hi."
    finally:
        set_trace_processors([])
    model_call = next(e.data for e in of_trace(bus, trace_id) if e.type == "model_responded")
    assert model_call["model"] == "gpt-fake"


@pytest.mark.parametrize("recovered", [False, True])
def test_a_run_past_max_turns_is_failed_even_when_a_handler_recovers_it(
    bus: EventBus, processor: PlugbusTracingProcessor, recovered: bool
) -> None:
    """Pins the limit the module documents: the SDK sets "Max turns
    exceeded" on the agent span before it calls `error_handlers["max_turns"]`,
    and the trace says nothing of what the handler did, so a recovered run
    and a failed one look alike. If this fails, the SDK changed: the
    processor (and its documentation) can then tell them apart."""
    agent = Agent(
        name="triage",
        instructions="Route.",
        model=FakeModel([([call("get_weather", {"city": "Paris"}, "c1")], 10, 1)] * 2),
        tools=[get_weather],
    )
    trace_id = gen_trace_id()
    config = RunConfig(workflow_name="support", trace_id=trace_id)

    def give_up(data: Any) -> Any:
        return RunErrorHandlerResult(final_output="Gave up.", include_in_history=False)

    if recovered:
        result = asyncio.run(
            Runner.run(agent, "hi", run_config=config, max_turns=1, error_handlers={"max_turns": give_up})
        )
        assert result.final_output == "Gave up."
    else:
        with pytest.raises(MaxTurnsExceeded):
            asyncio.run(Runner.run(agent, "hi", run_config=config, max_turns=1))
    events = of_trace(bus, trace_id)
    assert events[-1].type == "agent.failed"
    assert events[-1].data["error"] == "Max turns exceeded"
    assert processor.failures == 0 and processor.open_traces == 0


def test_a_tripped_guardrail_fails_the_run(bus: EventBus, processor: PlugbusTracingProcessor) -> None:
    agent = Agent(
        name="triage",
        instructions="Route.",
        model=FakeModel([([say("never seen")], 10, 1)] * 2),
        input_guardrails=[guardrail(True)],
    )
    trace_id = gen_trace_id()
    with pytest.raises(InputGuardrailTripwireTriggered):
        run(agent, trace_id)
    events = of_trace(bus, trace_id)
    assert events[0].type == "agent.run_started" and events[-1].type == "agent.failed"
    assert {"name": "no_secrets", "triggered": True, "agent": "triage"} in [
        e.data for e in events if e.type == "agent.guardrail"
    ]
    failed = events[-1].data
    assert failed["agent"] == "triage" and "uardrail" in failed["error"] and failed["duration_ms"] > 0
    answer = bus.query("agent-runs", {"run": trace_id})["answer"]
    assert answer["status"] == "failed" and answer["errors"] == [failed["error"]]


def test_a_failed_model_call_fails_the_run(bus: EventBus, processor: PlugbusTracingProcessor) -> None:
    agent = Agent(name="triage", instructions="Route.", model=FakeModel([RuntimeError("rate limited")]))
    trace_id = gen_trace_id()
    with pytest.raises(RuntimeError, match="rate limited"):
        run(agent, trace_id)
    events = of_trace(bus, trace_id)
    assert [e.type for e in events] == ["agent.run_started", "model_responded", "agent.failed"]
    model_call = events[1].data
    assert model_call["error"] == "Error: rate limited" and "usage" not in model_call
    failed = events[-1].data
    assert failed["agent"] == "triage" and "rate limited" in failed["error"]
    answer = bus.query("agent-runs", {"run": trace_id})["answer"]
    assert answer["status"] == "failed"
    assert processor.failures == 0 and processor.open_traces == 0


def test_an_agent_used_as_a_tool_may_fail_without_failing_the_run(
    bus: EventBus, processor: PlugbusTracingProcessor
) -> None:
    expert = Agent(name="expert", instructions="Know.", model=FakeModel([RuntimeError("expert is down")]))
    outer = Agent(
        name="triage",
        instructions="Ask the expert.",
        model=FakeModel([([call("ask_expert", {"input": "why?"}, "c1")], 30, 3), ([say("Done anyway.")], 40, 4)]),
        tools=[expert.as_tool(tool_name="ask_expert", tool_description="Ask the expert.")],
    )
    trace_id = gen_trace_id()
    assert run(outer, trace_id) == "Done anyway."
    events = of_trace(bus, trace_id)
    assert events[-1].type == "agent.run_finished"
    result = next(e.data for e in events if e.type == "tool.result")
    assert result["tool"] == "ask_expert" and "error" in result
    inner_call = next(e.data for e in events if e.type == "model_responded" and "error" in e.data)
    assert inner_call["agent"] == "expert"
    answer = bus.query("agent-runs", {"run": trace_id})["answer"]
    assert answer["status"] == "completed" and answer["agent"] == "triage"


def test_a_processor_on_a_shut_down_bus_never_raises_into_the_sdk(
    plugin_dir: Callable[..., Path], cache_dir: str, no_network: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    bus = EventBus(plugin_dir=plugin_dir("agent-runs"), cache_dir=cache_dir)
    bus.shutdown()
    processor = PlugbusTracingProcessor(bus)
    set_trace_processors([processor])
    caplog.set_level(logging.WARNING)
    try:
        agent = Agent(
            name="triage",
            instructions="Route.",
            model=FakeModel([([call("get_weather", {"city": "Paris"}, "c1")], 10, 1), ([say("Sunny.")], 10, 1)]),
            tools=[get_weather],
        )
        assert run(agent, gen_trace_id()) == "Sunny."
    finally:
        set_trace_processors([])
    # run_started, 2 model_responded, tool.called, tool.result, run_finished
    assert processor.failures == 6
    ours = [r for r in caplog.records if r.name == "plugbus.integrations"]
    assert len(ours) == 1 and "shut down" in ours[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith("openai.agents") and r.levelno >= logging.WARNING]
    assert processor.open_traces == 0


@pytest.mark.parametrize(
    ("arguments", "readable"),
    [
        ('{"city": "Paris", "n": NaN}', {"city": "Paris", "n": None}),
        ('{"city": "Paris", "n": 123456789012345678901234567890}', {"city": "Paris", "n": "123456789012345678901234567890"}),
        ('{"city": "Paris\\ud800"}', {"city": "Paris\ufffd"}),
    ],
)
def test_tool_arguments_with_no_json_form_still_reach_the_plugins(
    bus: EventBus, processor: PlugbusTracingProcessor, arguments: str, readable: dict[str, Any]
) -> None:
    # What a model wrote parses (json.loads takes NaN, any integer, lone
    # surrogates) but has no JSON form a plugin reads: made readable, as
    # every other payload value is, rather than losing both tool events.
    trace_id = gen_trace_id()
    with trace("support", trace_id=trace_id):
        with function_span("get_weather", input=arguments) as span:
            span.span_data.output = "sunny"
    events = of_trace(bus, trace_id)
    assert [e.type for e in events] == ["agent.run_started", "tool.called", "tool.result", "agent.run_finished"]
    assert all(e.seq is not None for e in events)  # every one reached the plugins
    assert bus.unserialisable == 0 and processor.failures == 0
    assert events[1].data["args"] == events[2].data["args"] == readable
    answer = bus.query("agent-runs", {"run": trace_id})["answer"]
    assert answer["tools"] == ["get_weather"] and answer["status"] == "completed"


def test_unreadable_usage_still_reports_the_model_call(bus: EventBus, processor: PlugbusTracingProcessor) -> None:
    trace_id = gen_trace_id()
    usage = {"input_tokens": "many", "output_tokens": 7, "input_tokens_details": {"cached_tokens": math.nan}}
    with trace("support", trace_id=trace_id):
        with generation_span(model="gpt-fake", usage=usage):
            pass
    events = of_trace(bus, trace_id)
    assert [e.type for e in events] == ["agent.run_started", "model_responded", "agent.run_finished"]
    # An unreadable count is 0 (prompt, completion) or left out (cache).
    assert events[1].data["usage"] == {"prompt_tokens": 0, "completion_tokens": 7}
    assert processor.failures == 0
    assert stats(bus, "cost-tracker")["errors"] == 0
