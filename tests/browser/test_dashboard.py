"""The dashboard of `plugbus serve`, driven in Debian's headless Chromium
(through its chromedriver, with Selenium): the demo's plugins appear, a
plugin that traps shows its failure and backtrace within seconds, its
quarantine counts down, and the filter narrows the event tail; the Runs
view lists runs live from agent-runs, filters them, and opens a run on its
timeline with OTel spans nested under their parents.

Needs the `plugbus` binary (PLUGBUS_BIN), the built plugins (`make plugins`:
plugins/dist and PLUGBUS_WASM_DIR) and `chromium` + `chromium-driver`
(`make setup-browser`). Leaves screenshots in target/dashboard.png and
target/dashboard-runs.png.
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
from selenium.webdriver.support.ui import Select

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

    def __init__(self, plugins: Path, log: Path, *, wait_ready: bool = True, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--plugins", str(plugins), "--log", str(log),
             "--cache-dir", str(CACHE), "--listen", "127.0.0.1:0"],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn", **(env or {})},
        )
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:
            seen.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                if not wait_ready:
                    break
            # Plugins load once it listens: start once they are in.
            if "plugbus: ready" in line:
                break
        else:
            pytest.fail("plugbus serve exited before it was ready:\n" + "".join(seen))

    def post(self, *events: dict[str, object]) -> None:
        body = "".join(json.dumps(e) + "\n" for e in events).encode()
        req = urllib.request.Request(self.url + "/events", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=10) as answer:
            assert answer.status == 202

    def queries(self, plugin: str) -> int:
        """The queries `plugin` answered or refused so far (from /metrics)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        m = re.search(rf'^plugbus_plugin_queries_total{{plugin="{re.escape(plugin)}"}} (\d+)', metrics, re.M)
        assert m, metrics
        return int(m.group(1))

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


def test_the_dashboard_lists_the_plugins_still_loading_while_the_host_starts(
    tmp_path: Path, browser: WebDriver
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("cost-tracker", "console-logger"):
        shutil.copy(DIST / f"{name}.wasm", plugins)
    # Each load waits 4 s before compiling (a failpoint): the page opens
    # while both are still loading.
    srv = Server(plugins, tmp_path / "log", wait_ready=False, env={"FAILPOINTS": "plugin.compile=sleep(4000)"})
    try:
        browser.get(srv.url + "/")
        eventually("the page goes live", lambda: text(browser, "#connection") == "live")
        loading = eventually("the start-up panel", lambda: text(browser, "#startup-panel"))
        assert "cost-tracker.wasm" in loading and "console-logger.wasm" in loading, loading
        assert "caught up from the log" in loading, loading
        eventually("cost-tracker's row", lambda: browser.find_elements(By.CSS_SELECTOR, 'tr[data-plugin="cost-tracker"]'),
                   timeout=30.0)
        eventually("the start-up panel goes away",
                   lambda: not browser.find_element(By.CSS_SELECTOR, "#startup-panel").is_displayed())
    finally:
        srv.stop()


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


def runs_rows(driver: WebDriver) -> list[str]:
    """The run ids of the Runs table, top to bottom (read in one go: rows come and go)."""
    ids = driver.execute_script(
        "return [...document.querySelectorAll('#run-rows tr[data-run]')].map((r) => r.dataset.run)"
    )
    return [str(i) for i in ids]


def run_cell(driver: WebDriver, run: str, field: str) -> str:
    return text(driver, f'#run-rows tr[data-run="{run}"] td[data-field={field}]')


def otel(run: str, name: str, span: str, parent: str | None, start: int, end: int,
         payload: dict[str, object]) -> dict[str, object]:
    """An event shaped as the OTLP mapping publishes it: its span in `otel`."""
    span_fields: dict[str, object] = {
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": span, "name": name, "kind": "internal",
        "start_unix_nano": start, "end_unix_nano": end, "status": "ok",
    }
    if parent:
        span_fields["parent_span_id"] = parent
    return {"correlation_id": run, "payload": {**payload, "agent": "planner", "otel": span_fields}}


def texts(driver: WebDriver, css: str) -> list[str]:
    """The rendered text of every element matching `css`, read in one go."""
    found = driver.execute_script("return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText)", css)
    return [str(t) for t in found]


def timeline_rows(driver: WebDriver) -> list[dict[str, str]]:
    """Each row of the open run's timeline (read in one go: it is redrawn as events arrive)."""
    rows = driver.execute_script(
        """return [...document.querySelectorAll('#timeline .tl-row')].map((r) => {
             const label = r.querySelector('.tl-label');
             const part = (css) => (r.querySelector(css) || {}).textContent || '';
             return { key: r.dataset.key || '', span: r.dataset.spanId || '', depth: r.dataset.depth || '',
                      label: label.innerText, indent: getComputedStyle(label).paddingLeft,
                      name: part('.tl-event-name'), source: part('.tl-source'), time: part('.tl-time') };
           })"""
    )
    return [{k: str(v) for k, v in row.items()} for row in rows]


def test_the_runs_view_lists_runs_live_filters_them_and_opens_a_timeline_with_nested_spans(
    server: Server, browser: WebDriver
) -> None:
    browser.get(server.url + "/")
    eventually("the page goes live", lambda: text(browser, "#connection") == "live")
    # agent-runs answers runs queries: the Runs tab shows, naming it.
    eventually("the Runs tab", lambda: browser.find_element(By.ID, "tab-runs").is_displayed())
    browser.find_element(By.ID, "tab-runs").click()
    eventually("the Runs view", lambda: browser.find_element(By.ID, "view-runs").is_displayed())
    assert "agent-runs" in text(browser, "#runs-source")
    assert not browser.find_element(By.ID, "view-overview").is_displayed()
    assert "view=runs" in browser.current_url

    # Hand-written runs: completed, running, failed (an agent name and a payload with markup: text only).
    server.post(
        {"name": "agent.run_started", "correlation_id": "run-1", "payload": {"agent": "planner"}},
        {"name": "model_responded", "correlation_id": "run-1",
         "payload": {"model": "gpt-4o", "usage": {"input_tokens": 1200, "output_tokens": 300}, "cost_usd": 0.0125}},
        {"name": "tool.called", "correlation_id": "run-1", "payload": {"tool": "search"}},
        {"name": "tool.result", "correlation_id": "run-1", "payload": {"tool": "search", "result": "<b>bold</b>"}},
        {"name": "agent.completed", "correlation_id": "run-1", "payload": {}},
    )
    server.post(
        {"name": "agent.run_started", "correlation_id": "run-2", "payload": {"agent": "booker"}},
        {"name": "tool.called", "correlation_id": "run-2", "payload": {"tool": "book"}},
    )
    server.post(
        {"name": "agent.run_started", "correlation_id": "run-3", "payload": {"agent": "<i>odd</i>"}},
        {"name": "agent.failed", "correlation_id": "run-3", "payload": {"error": "upstream timeout"}},
    )
    # An OTel-fed run: invoke_agent (the root span) with a chat and a tool call under it,
    # in the order spans end (children first), as exporters send them.
    t0 = time.time_ns() - 2_000_000_000
    root, chat, tool = "00f067aa0ba902b7", "b7ad6b7169203331", "c1d2e3f405060708"
    usage = {"prompt_tokens": 100, "completion_tokens": 20}
    server.post(
        {"name": "model_responded", **otel("run-otel", "chat gpt-4o", chat, root, t0 + 50_000_000, t0 + 450_000_000,
                                           {"model": "gpt-4o", "usage": usage})},
        {"name": "tool.called", **otel("run-otel", "execute_tool search", tool, root, t0 + 500_000_000,
                                       t0 + 800_000_000, {"tool": "search"})},
        {"name": "tool.result", **otel("run-otel", "execute_tool search", tool, root, t0 + 500_000_000,
                                       t0 + 800_000_000, {"tool": "search"})},
        {"name": "agent.run_started", **otel("run-otel", "invoke_agent planner", root, None, t0, t0 + 1_000_000_000,
                                             {})},
        {"name": "agent.run_finished", **otel("run-otel", "invoke_agent planner", root, None, t0, t0 + 1_000_000_000,
                                              {"status": "completed"})},
    )

    # Listed live, newest first, with their figures.
    eventually("the four runs", lambda: runs_rows(browser) == ["run-otel", "run-3", "run-2", "run-1"])
    eventually("run-1 completed", lambda: run_cell(browser, "run-1", "status") == "completed")
    assert run_cell(browser, "run-1", "agent") == "planner"
    assert run_cell(browser, "run-1", "model_calls") == "1"
    assert run_cell(browser, "run-1", "tokens") == "1,500"
    assert run_cell(browser, "run-1", "cost_usd") == "$0.0125"
    assert run_cell(browser, "run-1", "tool_calls") == "1"
    assert run_cell(browser, "run-2", "status") == "running"
    assert run_cell(browser, "run-3", "status") == "failed"
    assert run_cell(browser, "run-3", "errors") == "1"
    assert run_cell(browser, "run-3", "agent") == "<i>odd</i>", "untrusted text shows as text"
    assert not browser.find_elements(By.CSS_SELECTOR, "#run-rows i")

    # Filter by status, then by agent.
    status = Select(browser.find_element(By.ID, "runs-status"))
    status.select_by_value("failed")
    eventually("only the failed run", lambda: runs_rows(browser) == ["run-3"])
    status.select_by_value("running")
    eventually("only the running run", lambda: runs_rows(browser) == ["run-2"])
    status.select_by_value("")
    eventually("all runs again", lambda: len(runs_rows(browser)) == 4)
    agents = Select(browser.find_element(By.ID, "runs-agent"))
    eventually("the agents to filter by",
               lambda: {o.get_attribute("value") for o in agents.options} >= {"planner", "booker", "<i>odd</i>"})
    agents.select_by_value("booker")
    eventually("only booker's run", lambda: runs_rows(browser) == ["run-2"])
    agents.select_by_value("")
    eventually("all runs again", lambda: len(runs_rows(browser)) == 4)

    # A new run appears without a reload.
    server.post({"name": "agent.run_started", "correlation_id": "run-5", "payload": {"agent": "booker"}})
    eventually("the new run on top", lambda: runs_rows(browser)[:1] == ["run-5"])

    # Opening the OTel-fed run: its spans, each child indented under its parent, with bars.
    browser.find_element(By.CSS_SELECTOR, '#run-rows tr[data-run="run-otel"] td[data-field=run]').click()
    eventually("the run's detail", lambda: browser.find_element(By.ID, "run-detail").is_displayed())
    assert text(browser, "#run-id") == "run-otel"
    assert "run=run-otel" in browser.current_url

    # (The demo's plugins add follow-ups of their own to the run: cost.priced, stats.event_counts.)
    def spans() -> list[dict[str, str]] | None:
        rows = [r for r in timeline_rows(browser) if r["span"]]
        return rows if len(rows) == 3 else None

    rows = eventually("three spans", spans)
    assert [r["span"] for r in rows] == [root, chat, tool], rows
    assert [r["depth"] for r in rows] == ["0", "1", "1"], rows
    assert "invoke_agent planner" in rows[0]["label"]
    assert "agent.run_started → agent.run_finished" in rows[0]["label"]
    assert "tool.called → tool.result" in rows[2]["label"]
    assert float(rows[1]["indent"].rstrip("px")) > float(rows[0]["indent"].rstrip("px"))
    widths = browser.execute_script(
        "return [...document.querySelectorAll('#timeline .tl-span .tl-bar')].map((b) => b.offsetWidth)"
    )
    assert len(widths) == 3 and widths[0] > widths[2] > 0, widths
    assert "from the event log" in text(browser, "#timeline-info")
    durations = texts(browser, "#timeline .tl-span .tl-duration")
    assert durations == ["1.000 s", "400.0 ms", "300.0 ms"], durations
    eventually("its figures", lambda: text(browser, '#run-summary [data-field="status"]') == "completed")
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(SCREENSHOT.with_name("dashboard-runs.png")))

    # A hand-written run: its events in order; a row opens to its payload, as text.
    browser.find_element(By.CSS_SELECTOR, '#run-rows tr[data-run="run-1"] td[data-field=agent]').click()

    def posted() -> list[dict[str, str]]:
        return [r for r in timeline_rows(browser) if r["source"] == "host"]

    eventually("run-1's timeline", lambda: len(posted()) == 5 and text(browser, "#run-id") == "run-1")
    names = [r["name"] for r in posted()]
    assert names == ["agent.run_started", "model_responded", "tool.called", "tool.result", "agent.completed"]
    times = [r["time"] for r in timeline_rows(browser)]
    assert all(t.startswith("+") for t in times) and times[0] == "+0 ns", times
    result_row = next(r for r in posted() if r["name"] == "tool.result")
    browser.find_element(By.CSS_SELECTOR, f'#timeline .tl-row[data-key="{result_row["key"]}"]').click()
    payload = eventually("the payload", lambda: text(browser, "#timeline .tl-details pre.tl-payload"))
    assert "<b>bold</b>" in payload
    assert not browser.find_elements(By.CSS_SELECTOR, "#timeline b")
    eventually("run-1's figures", lambda: text(browser, '#run-summary [data-field="tokens"]') == "1,500")

    # Live: a late event of the open run joins its timeline.
    server.post({"name": "audit.note", "correlation_id": "run-1", "payload": {"note": "late"}})
    eventually("the late event", lambda: [r["name"] for r in posted()][-1:] == ["audit.note"])

    # At most one plugin query a second while the view shows, and none once it does not.
    before = server.queries("agent-runs")
    time.sleep(3.0)
    asked = server.queries("agent-runs") - before
    assert 1 <= asked <= 4, asked
    browser.find_element(By.ID, "tab-overview").click()
    eventually("the overview", lambda: browser.find_element(By.ID, "view-overview").is_displayed())
    assert not browser.find_element(By.ID, "view-runs").is_displayed()
    time.sleep(0.5)  # a query that was already on its way
    before = server.queries("agent-runs")
    time.sleep(2.5)
    assert server.queries("agent-runs") == before
