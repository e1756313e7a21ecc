"""plugbus for Python agents: an in-process event bus whose observers can be
sandboxed WebAssembly plugins, and a drop-in upgrade of agent-event-bus.

    from plugbus import Event, EventBus      # was: from agent_event_bus import ...

    bus = EventBus(plugin_dir="plugins/dist")  # cost-tracker, audit-log, ... in the same bus

    @bus.on("budget_exceeded")
    def stop(event: Event) -> None: ...

    bus.emit("model_responded", {"usage": {...}, "cost_usd": 0.02}, correlation_id="run-42")

See docs/python.md in the plugbus repository.
"""

from ._bus import ErrorCallback, Event, EventBus, Handler, QueryError, get_bus
from ._native import PlugbusError

__all__ = ["ErrorCallback", "Event", "EventBus", "Handler", "PlugbusError", "QueryError", "get_bus"]
