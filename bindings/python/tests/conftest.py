"""Shared fixtures: the real plugins built from `plugins/` (by `make
plugins`, found through PLUGBUS_WASM_DIR) in temporary directories."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
WASM_DIR = Path(os.environ.get("PLUGBUS_WASM_DIR", ROOT / "target" / "plugbus-test-wasm"))
CACHE_DIR = ROOT / "target" / "plugbus-test-cache"
BIN = Path(os.environ.get("PLUGBUS_BIN", ROOT / "target" / "debug" / "plugbus"))


def serve_plugbus(plugins: Path, *args: str) -> Iterator[str]:
    """`plugbus serve --plugins PLUGINS ARGS` on a free loopback port, for a
    fixture to `yield from`: yields its base URL once its plugins are loaded
    (`plugbus: ready`), then stops it with SIGTERM (a graceful shutdown) when
    the test is done."""
    if not BIN.is_file():
        pytest.fail(f"{BIN} is missing: build it with `cargo build` (or run `make test`)")
    child = subprocess.Popen(
        [str(BIN), "serve", "--plugins", str(plugins), "--listen", "127.0.0.1:0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    assert child.stderr is not None
    address = None
    ready = False
    for line in child.stderr:
        if "listening on http://" in line:
            address = line.split("listening on http://")[1].split()[0]
        # Plugins load once it listens: start once they are in.
        if "plugbus: ready" in line:
            ready = True
            break
    if address is None or not ready:
        pytest.fail("plugbus serve exited before it was ready")
    # Keep draining stderr so the server never blocks on a full pipe.
    threading.Thread(target=child.stderr.read, daemon=True).start()
    try:
        yield f"http://{address}"
    finally:
        child.terminate()
        child.wait(timeout=30)


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Callable[..., Path]:
    """`plugin_dir("cost-tracker", misbehave="[limits]...")`: a directory with
    those plugins, each with its first-party manifest or the given one."""

    def make(*names: str, **manifests: str) -> Path:
        out = tmp_path / "plugins"
        out.mkdir(exist_ok=True)
        for name in (*names, *(m.replace("_", "-") for m in manifests)):
            wasm = WASM_DIR / f"{name}.wasm"
            if not wasm.is_file():
                pytest.fail(f"{wasm} is missing: build the plugins with `make plugins`")
            shutil.copy(wasm, out / f"{name}.wasm")
            first_party = ROOT / "plugins" / name / f"{name}.toml"
            if first_party.is_file():
                shutil.copy(first_party, out / f"{name}.toml")
        for key, text in manifests.items():
            (out / f"{key.replace('_', '-')}.toml").write_text(text)
        return out

    return make


@pytest.fixture
def cache_dir() -> str:
    return str(CACHE_DIR)
