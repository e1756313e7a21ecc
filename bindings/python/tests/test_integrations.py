"""plugbus.integrations without the frameworks: never imported by `plugbus`,
a clear ImportError naming the extra when missing, and payload values the
plugins can always read."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

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
