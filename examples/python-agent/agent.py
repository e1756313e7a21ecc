"""A small Python agent loop on plugbus (no network: a scripted model and
scripted tools), with Wasm observers in the same process.

    python examples/python-agent/agent.py plugins/dist

The plugins of the directory given (`make plugins` puts cost-tracker,
audit-log, secret-scanner, agent-runs and others in plugins/dist) watch every
event in their sandboxes; a Python handler on
`budget_exceeded` (emitted by cost-tracker) stops the loop, one on
`security.secret_detected` (secret-scanner) reports the leak without ever
seeing the secret. The agent itself only changed its import from
agent-event-bus.
"""

from __future__ import annotations

import sys
from pathlib import Path

from plugbus import Event, EventBus

# The scripted model and its cost per step: cost-tracker's manifest sets a
# $0.05 budget, passed at step 4.
STEPS = [
    {"tool": "web_search", "args": {"query": "wasm sandboxing 2026"}, "cost": 0.008},
    {"tool": "fetch_url", "args": {"url": "https://example.org/paper.pdf"}, "cost": 0.014},
    {"tool": "read_file", "args": {"path": "~/.aws/credentials"}, "cost": 0.011},
    {"tool": "python", "args": {"code": "summarise(papers)"}, "cost": 0.019},
    {"tool": "web_search", "args": {"query": "more papers"}, "cost": 0.022},
    {"tool": "web_search", "args": {"query": "even more papers"}, "cost": 0.025},
]

TOOL_OUTPUT = {
    "read_file": "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n",
}

def run(plugin_dir: Path) -> int:
    with EventBus(plugin_dir=plugin_dir, keep_history=True) as bus:
        failures = bus.load_failures()
        if failures:
            for f in failures:
                print(f"could not load {f['path']}: {f['reason']}", file=sys.stderr)
            return 1
        stopped: list[Event] = []

        @bus.on("budget_exceeded")
        def stop(event: Event) -> None:
            print(f"  ! budget exceeded: ${event.data['spent_usd']:.3f} of ${event.data['budget_usd']:.2f}; stopping")
            stopped.append(event)

        @bus.on("security.*")
        def leak(event: Event) -> None:
            where = ", ".join(p for places in event.data["locations"].values() for p in places)
            print(f"  ! {event.source}: {', '.join(event.data['kinds'])} in {event.data['event_name']} ({where})")

        run_id = "run-py-1"
        bus.emit("agent.run_started", {"agent": "python-researcher"}, correlation_id=run_id)
        for n, step in enumerate(STEPS, 1):
            if stopped:
                break
            print(f"step {n}: {step['tool']}")
            bus.emit(
                "model_responded",
                {"model": "scripted-1", "usage": {"prompt_tokens": 2000 * n, "completion_tokens": 300},
                 "cost_usd": step["cost"]},
                correlation_id=run_id,
            )
            bus.emit("tool.called", {"tool": step["tool"], "args": step["args"]}, correlation_id=run_id)
            output = TOOL_OUTPUT.get(step["tool"], "ok")
            bus.emit("tool.result", {"tool": step["tool"], "stdout": output}, correlation_id=run_id)
            # Let the observers catch up before the next step, as a careful agent would.
            bus.flush()
        bus.emit("agent.completed", {"steps": n}, correlation_id=run_id)
        bus.flush()

        summary = bus.query("agent-runs", {"run": run_id})["answer"]
        print(
            f"run {run_id}: {summary['status']}, {len(summary['tools'])} tool calls, "
            f"{summary['tokens']} tokens, ${summary['cost_usd']:.3f}"
        )
        for p in bus.plugins():
            s = p["stats"]
            print(f"  {p['name']:<15} delivered {s['delivered']:>3}  errors {s['errors']}  failures {sum(s['failures'].values())}")
        return 0 if stopped else 2


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1] if len(sys.argv) > 1 else "plugins/dist")))
