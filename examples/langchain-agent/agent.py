"""A LangChain agent loop on plugbus with no hand-written emits: one
callback handler (`PlugbusCallbackHandler`) turns LangChain's own callbacks
into the events the sandboxed plugins read. The model is langchain-core's
`GenericFakeChatModel` (scripted replies with usage, no network, no key);
the tool is a real `@tool`. cost-tracker prices each call from its table
(`gpt-4.1`) and its `budget_exceeded` stops the loop; agent-runs answers
for each run.

    python examples/langchain-agent/agent.py plugins/dist

Needs `pip install 'plugbus[langchain]'` (in the test venv already).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

from plugbus import Event, EventBus
from plugbus.integrations.langchain import PlugbusCallbackHandler

QUESTIONS = ["Weather in Paris?", "And Lisbon?", "Oslo?", "Rome?", "Kyoto?", "Lima?"]


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def replies() -> Iterator[AIMessage]:
    """The scripted model: a tool call, then an answer, for every question."""
    usage = {"input_tokens": 2400, "output_tokens": 600, "total_tokens": 3000}
    meta = {"model_name": "gpt-4.1"}
    for n in range(len(QUESTIONS)):
        yield AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": f"city {n}"}, "id": f"c{n}"}],
                        usage_metadata=usage, response_metadata=meta)
        yield AIMessage(content=f"It is sunny in city {n}.", usage_metadata=usage, response_metadata=meta)


def main(plugin_dir: Path) -> int:
    llm = GenericFakeChatModel(messages=replies())

    def run(question: str) -> str:
        messages: list[BaseMessage] = [HumanMessage(question)]
        while True:
            reply = llm.invoke(messages)
            messages.append(reply)
            if not isinstance(reply, AIMessage) or not reply.tool_calls:
                return str(reply.content)
            for call in reply.tool_calls:
                messages.append(get_weather.invoke(call))

    agent = RunnableLambda(run, name="weather-agent")
    stopped: list[Event] = []
    with EventBus(plugin_dir=plugin_dir) as bus:
        bus.on("budget_exceeded", stopped.append)
        handler = PlugbusCallbackHandler(bus)
        done = 0
        for question in QUESTIONS:
            answer = agent.invoke(question, config={"callbacks": [handler]})
            done += 1
            print(f"{question!r} -> {answer!r}")
            bus.flush()  # let the plugins see this run before the next
            if stopped:
                spent = stopped[0].data["spent_usd"]
                print(f"budget exceeded after {done} of {len(QUESTIONS)} questions (${spent:.4f}): agent stopped")
                break
        runs = bus.query("agent-runs", {"runs": {"limit": 10}})["answer"]["runs"]
        for r in runs:
            print(f"  run {r['run'][:8]}… {r['agent']}: {r['status']}, {r['model_calls']} model calls, "
                  f"{r['tool_calls']} tool calls, {r['tokens']} tokens, ${r['cost_usd']:.4f}")
    return 0 if stopped else 1


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "plugins/dist")))
