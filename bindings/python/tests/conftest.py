"""Shared fixtures: the real plugins built from `plugins/` (by `make
plugins`, found through PLUGBUS_WASM_DIR) in temporary directories."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
WASM_DIR = Path(os.environ.get("PLUGBUS_WASM_DIR", ROOT / "target" / "plugbus-test-wasm"))
CACHE_DIR = ROOT / "target" / "plugbus-test-cache"


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
