"""Adapters that feed a plugbus `EventBus` from agent frameworks' own hooks,
with no hand-written emits. Each lives in a module of its own and needs its
framework, installed as an extra of the `plugbus` package:

- `plugbus.integrations.langchain`: `PlugbusCallbackHandler(bus)` and
  `AsyncPlugbusCallbackHandler(bus)`, LangChain callback handlers
  (`pip install 'plugbus[langchain]'`);
- `plugbus.integrations.openai_agents`: `PlugbusTracingProcessor(bus)`, an
  OpenAI Agents SDK trace processor (`pip install 'plugbus[openai-agents]'`);
- `plugbus.integrations.otel`: `PlugbusSpanExporter(bus)`, an OpenTelemetry
  SDK span exporter handing spans to the Rust GenAI mapping in-process, for
  any OTel-instrumented framework (pydantic-ai, OpenLLMetry)
  (`pip install 'plugbus[otel]'`).

They emit the event vocabulary of docs/opentelemetry.md (`model_responded`,
`tool.called`, `tool.result`, `agent.run_started`, `agent.run_finished`,
`agent.failed`), one agent run per correlation id, so cost-tracker,
agent-runs and the other plugins work on them unchanged. Importing this
package imports no framework.
"""
