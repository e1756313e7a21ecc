"""Processes: fork, and interpreter exit with plugins loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_forked_child_gets_a_clear_error_never_a_hang(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    script = textwrap.dedent(
        f"""
        import os, sys
        from plugbus import EventBus, PlugbusError, get_bus
        bus = EventBus(plugin_dir={str(plugin_dir("console-logger"))!r}, cache_dir={cache_dir!r})
        bus.emit("before.fork")
        bus.flush()
        pid = os.fork()
        if pid == 0:
            try:
                bus.emit("in.child")
                os._exit(3)
            except PlugbusError as e:
                assert "fork" in str(e), e
            plain = get_bus("child")            # a bus without plugins works in the child
            seen = []
            plain.on("x", seen.append)
            plain.emit("x")
            os._exit(0 if len(seen) == 1 else 4)
        _, status = os.waitpid(pid, 0)
        bus.emit("after.fork")
        bus.flush()
        delivered = bus.plugins()[0]["stats"]["delivered"]
        print(os.waitstatus_to_exitcode(status), delivered)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "2"], out.stdout + out.stderr


def test_the_interpreter_exits_cleanly_with_plugins_loaded(plugin_dir: Callable[..., Path], cache_dir: str) -> None:
    script = textwrap.dedent(
        f"""
        from plugbus import EventBus, get_bus
        bus = get_bus("main", plugin_dir={str(plugin_dir("console-logger", "cost-tracker"))!r}, cache_dir={cache_dir!r})
        other = EventBus(plugin_dir={str(plugin_dir("misbehave"))!r}, cache_dir={cache_dir!r})
        for i in range(100):
            bus.emit("model_responded", {{"usage": {{"prompt_tokens": i}}}})
            other.emit("misbehave.spin")
        print("done")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done"
