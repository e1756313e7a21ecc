"""Plugin artifacts and a third-party OCI client: oras (the ORAS Python SDK)
and `plugbus push`/`pull` against a real registry (Debian's docker-registry,
the CNCF distribution registry, started on loopback per test).

An artifact oras pushes with the CNCF Wasm media types pulls and loads; what
plugbus pushes, oras pulls file by file, with the media types docs/oci.md
documents; an artifact with other media types is refused by name.

Needs the `plugbus` binary (PLUGBUS_BIN), the built plugins (PLUGBUS_WASM_DIR)
and Debian's docker-registry (`make setup-registry`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import oras.client  # type: ignore[import-untyped]
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PLUGBUS_BIN", ROOT / "target" / "debug" / "plugbus"))
WASM = Path(os.environ.get("PLUGBUS_WASM_DIR", ROOT / "target" / "plugbus-test-wasm"))
CACHE = ROOT / "target" / "plugbus-test-cache"
DOCKER_REGISTRY = shutil.which("docker-registry")

WASM_CONFIG = "application/vnd.wasm.config.v0+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A docker-registry on a free loopback port: its `host:port`."""
    if DOCKER_REGISTRY is None:
        pytest.fail("docker-registry is not installed: run `make setup-registry`")
    addr = f"127.0.0.1:{free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: {addr}\n"
    )
    proc = subprocess.Popen([DOCKER_REGISTRY, "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://{addr}/v2/", timeout=1) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, "docker-registry exited"
        assert time.monotonic() < deadline, "docker-registry did not answer"
        time.sleep(0.02)
    yield addr
    proc.kill()
    proc.wait()


def plugbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True,
                          env={**os.environ, "RUST_LOG": "warn"})


def ok(*args: str) -> dict[str, Any]:
    """Runs plugbus ARGS --json, expecting success: its JSON answer (the last
    line of a pull's JSON Lines, or `check`'s one document)."""
    done = plugbus(*args, "--json")
    assert done.returncode == 0, done.stderr
    text = done.stdout.strip()
    answer: dict[str, Any] = json.loads(text if text.startswith("{\n") else text.splitlines()[-1])
    return answer


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_artifact_oras_pushes_with_the_cncf_media_types_pulls_and_loads(
        registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(WASM / "cost-tracker.wasm", src / "cost-tracker.wasm")
    config = src / "config.json"
    config.write_text(json.dumps({"architecture": "wasm", "os": "wasip2",
                                  "layerDigests": [sha256(src / "cost-tracker.wasm")]}))
    # oras titles each layer with the path it is given: relative, from here.
    monkeypatch.chdir(src)
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    client.push(target=f"{registry}/oras/cost-tracker:1", files=["cost-tracker.wasm:application/wasm"],
                manifest_config=f"config.json:{WASM_CONFIG}")

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    pulled = ok("pull", f"oci://{registry}/oras/cost-tracker:1", "--plugins", str(plugins))
    assert pulled["name"] == "cost-tracker"
    assert pulled["wasm_digest"] == sha256(src / "cost-tracker.wasm")
    assert (plugins / "cost-tracker.wasm").read_bytes() == (src / "cost-tracker.wasm").read_bytes()
    checked = ok("check", str(plugins / "cost-tracker.wasm"), "--cache-dir", str(CACHE))
    assert checked["name"] == "cost-tracker"


def test_oras_pulls_what_plugbus_pushes_with_the_documented_media_types(registry: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(WASM / "cost-tracker.wasm", src / "cost-tracker.wasm")
    (src / "cost-tracker.toml").write_text('subscriptions = ["model_responded"]\n')
    pushed = ok("push", str(src / "cost-tracker.wasm"), f"oci://{registry}/plugbus/cost-tracker:1")

    client = oras.client.OrasClient(hostname=registry, insecure=True)
    target = f"{registry}/plugbus/cost-tracker:1"
    manifest = client.get_manifest(target)
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == WASM_CONFIG
    layers = [(layer["mediaType"], layer["annotations"]["org.opencontainers.image.title"])
              for layer in manifest["layers"]]
    assert layers == [("application/wasm", "cost-tracker.wasm"),
                      ("application/vnd.plugbus.manifest.v1+toml", "cost-tracker.toml")]
    assert manifest["layers"][0]["digest"] == pushed["wasm_digest"]
    blob = client.get_blob(client.get_container(target), manifest["config"]["digest"])
    config = blob.json()
    assert (config["architecture"], config["os"]) == ("wasm", "wasip2")
    assert config["layerDigests"] == [layer["digest"] for layer in manifest["layers"]]
    assert any(name.startswith("plugbus:observer/") for name in config["component"]["exports"]), config

    out = tmp_path / "out"
    files = client.pull(target=target, outdir=str(out))
    assert sorted(Path(f).name for f in files) == ["cost-tracker.toml", "cost-tracker.wasm"]
    for name in ("cost-tracker.wasm", "cost-tracker.toml"):
        assert (out / name).read_bytes() == (src / name).read_bytes()


def test_an_artifact_with_other_media_types_is_refused_by_name(
        registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(WASM / "cost-tracker.wasm", src / "cost-tracker.wasm")
    monkeypatch.chdir(src)
    client = oras.client.OrasClient(hostname=registry, insecure=True)
    # oras's defaults: an empty config of its own type, an octet-stream-ish layer.
    client.push(target=f"{registry}/other/thing:1", files=["cost-tracker.wasm:application/octet-stream"])

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    reference = f"oci://{registry}/other/thing:1"
    done = plugbus("pull", reference, "--plugins", str(plugins))
    assert done.returncode != 0
    assert reference in done.stderr and "not a plugin artifact" in done.stderr, done.stderr
    assert "config media type" in done.stderr, done.stderr
    assert list(plugins.iterdir()) == []
