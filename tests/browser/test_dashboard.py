"""The dashboard of `plugbus serve`, driven in Debian's headless Chromium
(through its chromedriver, with Selenium): the demo's plugins appear, a
plugin that traps shows its failure and backtrace within seconds, its
quarantine counts down, and the filter narrows the event tail.

Needs the `plugbus` binary (PLUGBUS_BIN), the built plugins (`make plugins`:
plugins/dist and PLUGBUS_WASM_DIR) and `chromium` + `chromium-driver`
(`make setup-browser`). Leaves a screenshot in target/dashboard.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PLUGBUS_BIN", ROOT / "target" / "debug" / "plugbus"))
DIST = ROOT / "plugins" / "dist"
CACHE = ROOT / "target" / "plugbus-test-cache"
SCREENSHOT = ROOT / "target" / "dashboard.png"
CHROMEDRIVER = "/usr/bin/chromedriver"

T = TypeVar("T")


def eventually(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Polls `probe` until it returns something truthy, or fails naming `what`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {timeout} s (last: {last!r})")


class Server:
    """A `plugbus serve` on a free loopback port, stopped with SIGTERM."""

    def __init__(self, plugins: Path, log: Path) -> None:
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--plugins", str(plugins), "--log", str(log),
             "--cache-dir", str(CACHE), "--listen", "127.0.0.1:0"],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"},
        )
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:
            seen.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        else:
            pytest.fail("plugbus serve exited before listening:\n" + "".join(seen))

    def post(self, *events: dict[str, object]) -> None:
        body = "".join(json.dumps(e) + "\n" for e in events).encode()
        req = urllib.request.Request(self.url + "/events", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as answer:
            assert answer.status == 202

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    if not BIN.is_file():
        pytest.fail(f"{BIN} is missing: build it with `cargo build`")
    if not (DIST / "cost-tracker.wasm").is_file():
        pytest.fail(f"{DIST} has no plugins: build them with `make plugins`")
    plugins = tmp_path / "plugins"
    # The demo's plugins, as `make demo` loads them, with misbehave
    # quarantined after one failure for 30 s (the countdown to watch).
    shutil.copytree(DIST, plugins)
    (plugins / "misbehave.toml").write_text(
        "[limits]\nquarantine_after = 1\nquarantine_backoff_ms = 30000\n"
    )
    srv = Server(plugins, tmp_path / "log")
    yield srv
    srv.stop()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not Path(CHROMEDRIVER).is_file():
        pytest.fail(f"{CHROMEDRIVER} is missing: install Chromium with `make setup-browser`")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def text(driver: WebDriver, css: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def only(rows: list[tuple[str, str]], keep: Callable[[tuple[str, str]], bool]) -> list[tuple[str, str]] | None:
    """`rows` when there are some and every one passes `keep`."""
    return rows if rows and all(keep(r) for r in rows) else None


def tail(driver: WebDriver) -> list[tuple[str, str]]:
    """(name, correlation id) of each row of the event tail, newest first."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#event-rows tr[data-event-id]")
    return [
        (r.find_element(By.CSS_SELECTOR, "td[data-field=name]").text,
         r.find_element(By.CSS_SELECTOR, "td[data-field=correlation_id]").text)
        for r in rows
    ]


def countdown(driver: WebDriver) -> float | None:
    m = re.search(r"retry in ([\d.]+) s", text(driver, 'tr[data-plugin="misbehave"] .countdown'))
    return float(m.group(1)) if m else None


def test_the_dashboard_shows_plugins_failures_quarantine_and_a_filtered_tail(
    server: Server, browser: WebDriver
) -> None:
    browser.get(server.url + "/")
    eventually("the page goes live", lambda: text(browser, "#connection") == "live")

    # The demo's plugins appear, each with its language.
    names = sorted(p.stem for p in DIST.glob("*.wasm"))
    assert len(names) >= 8
    for name in names:
        row = f'tr[data-plugin="{name}"]'
        eventually(f"{name}'s row", lambda: browser.find_elements(By.CSS_SELECTOR, row))
    languages = {n: text(browser, f'tr[data-plugin="{n}"] td[data-field=language]') for n in names}
    assert "Rust" in languages["cost-tracker"]
    assert "C" in languages["event-counter"]
    assert "Python" in languages["secret-scanner"]
    assert "JavaScript" in languages["latency-watch"]

    # An agent's events, two runs.
    for step in range(3):
        server.post(
            {"name": "tool.called", "correlation_id": "run-1", "payload": {"tool": "search", "step": step}},
            {"name": "model_responded", "correlation_id": "run-1",
             "payload": {"model": "gpt-4o", "input_tokens": 1200, "output_tokens": 300}},
            {"name": "tool.called", "correlation_id": "run-2", "payload": {"tool": "fetch", "step": step}},
        )
    eventually("the tail shows the run", lambda: len(tail(browser)) >= 9)

    # A trap: the failure and its backtrace are on the page within seconds.
    started = time.monotonic()
    server.post({"name": "misbehave.panic", "correlation_id": "run-2", "payload": {}})
    failure = 'tr.failure[data-failure-of="misbehave"]'
    backtrace = eventually(
        "misbehave's backtrace", lambda: text(browser, failure + " pre.backtrace"), timeout=5.0
    )
    assert "misbehave" in backtrace, backtrace
    assert "panic" in text(browser, failure + " .failure-kind")
    assert "misbehave asked to panic" in text(browser, failure + " .failure-message")
    assert time.monotonic() - started < 5.0

    # Quarantine shows a countdown that goes down.
    eventually(
        "misbehave quarantined",
        lambda: browser.find_element(By.CSS_SELECTOR, 'tr[data-plugin="misbehave"]').get_attribute("data-state")
        == "quarantined",
    )
    first = eventually("a countdown", lambda: countdown(browser))
    assert 20.0 < first <= 30.0, first
    time.sleep(1.5)
    later = countdown(browser)
    assert later is not None and later < first - 0.5, (first, later)

    # The filter narrows the tail: by pattern, then by correlation id too.
    everything = tail(browser)
    assert {n for n, _ in everything} >= {"tool.called", "model_responded", "misbehave.panic"}
    browser.find_element(By.ID, "filter-pattern").send_keys("tool.*")
    browser.find_element(By.CSS_SELECTOR, "#filter-form button[type=submit]").click()
    only_tools = eventually("only tool.* rows", lambda: only(tail(browser), lambda r: r[0] == "tool.called"))
    assert len(only_tools) == 6 and len(only_tools) < len(everything)
    browser.find_element(By.ID, "filter-correlation").send_keys("run-2")
    browser.find_element(By.CSS_SELECTOR, "#filter-form button[type=submit]").click()
    run_two = eventually("only run-2's tool calls", lambda: only(tail(browser), lambda r: r[1] == "run-2"))
    assert run_two == [("tool.called", "run-2")] * 3
    # New events that match arrive live; others do not.
    server.post(
        {"name": "tool.called", "correlation_id": "run-2", "payload": {"tool": "late"}},
        {"name": "tool.called", "correlation_id": "run-1", "payload": {"tool": "other run"}},
    )
    eventually("the new run-2 call", lambda: len(tail(browser)) == 4)
    time.sleep(0.7)
    assert all(c == "run-2" for _, c in tail(browser))

    # The log panel (serve runs with --log).
    assert text(browser, "#log dd[data-field=last_seq]") != ""

    browser.find_element(By.ID, "filter-clear").click()
    eventually("the whole tail again", lambda: len(tail(browser)) > 4)
    browser.execute_script("window.scrollTo(0, 0)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
