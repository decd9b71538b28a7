"""The console in a real browser (Debian's Chromium, driven by Selenium) over the running system.

Each test starts the system with Prometheus and the console, sends traffic, and checks what a
user sees: the topology with its three services and edges, the method table with nonzero rates,
a trace opened from its id with spans of three services, a run's states and a live WatchRun
event. Screenshots go to the test's temp dir (checked non-blank); with AGENTMESH_SCREENSHOTS_DIR
set (`make screenshots`) they are also copied there, for the README.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from PIL import Image
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc, run_pb2
from agentmesh.rag.v1 import rag_service_pb2, rag_service_pb2_grpc
from tests.console.observed_system import FRESH_CONNECTIONS, ObservedSystem, observed_system, send_traffic

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(90)]

# Headless, and nothing that reaches for the network on its own (the machine has none).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
)
WAIT_S = 30


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("chromium and chromium-driver are not installed (make debian-deps)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.asynccontextmanager
async def traffic(system: ObservedSystem) -> AsyncIterator[None]:
    """Calls keep flowing while the browser looks (rates are over the last seconds)."""

    async def loop() -> None:
        async with grpc.aio.insecure_channel(system.gateway_address, options=FRESH_CONNECTIONS) as channel:
            rag = rag_service_pb2_grpc.RagServiceStub(channel)
            while True:
                await send_traffic(system.gateway_address, calls=1)
                with contextlib.suppress(grpc.aio.AioRpcError):  # one bad request a round: errors show by code
                    await rag.Search(rag_service_pb2.SearchRequest(query="refunds", top_k=0), timeout=5)
                await asyncio.sleep(0.2)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    path = tmp_path / "screenshots" / name
    path.parent.mkdir(exist_ok=True)
    # The whole page, not just the first screenful (bounded, for a page that grows): Chromium's
    # DevTools protocol captures beyond the viewport.
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 1600), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        colors = rgb.getcolors(maxcolors=rgb.width * rgb.height) or []
        commonest = max(count for count, _ in colors)
        # A blank (or error) page is one colour; the console has text, boxes and bars in many.
        assert len(colors) > 50, f"{name} looks blank: {len(colors)} colours"
        assert commonest < 0.95 * rgb.width * rgb.height, f"{name} is almost one colour"
    target = os.environ.get("AGENTMESH_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / name)
    return path


def wait_js(driver: WebDriver, script: str, what: str, *, state: Callable[[], object] = lambda: "") -> object:
    """Wait until ``script`` returns something truthy (evaluated in the page), or fail saying what.

    ``state`` describes what the console knew at that moment, for the failure message.
    """
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(lambda d: d.execute_script(script))
    except TimeoutException:
        raise AssertionError(f"the page never showed {what}; the console had: {state()}") from None


async def test_topology_shows_the_three_services_their_edges_and_the_method_table_nonzero_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: webdriver.Chrome
) -> None:
    async with observed_system(tmp_path, monkeypatch) as system, traffic(system):

        def look() -> None:
            browser.get(system.console.url + "/")
            wait_js(
                browser,
                """return ["gateway", "agent", "rag"].every(
                     (s) => document.querySelector(`#topology g.node[data-service="${s}"] g.inst.health-passing`))""",
                "the three services, each with a passing instance",
            )
            wait_js(
                browser,
                """const edge = (a, b) =>
                     document.querySelector(`#topology g.edge[data-source="${a}"][data-target="${b}"]`);
                   return [["client", "gateway"], ["gateway", "agent"], ["agent", "rag"], ["gateway", "rag"]]
                     .every(([a, b]) => edge(a, b) && Number(edge(a, b).dataset.rate) > 0);""",
                "edges client → gateway → agent → rag (and gateway → rag) with calls/s",
                state=lambda: json.dumps(system.console.console.live.snapshot.get("topology", {}).get("edges")),
            )
            wait_js(
                browser,
                """const rows = [...document.querySelectorAll("#methods tbody tr")];
                   const rate = (svc, m) => rows.filter((r) => r.dataset.service === svc && r.dataset.method === m)
                     .map((r) => Number(r.querySelector("td.rate").textContent))[0] || 0;
                   return rate("gateway", "/agentmesh.agent.v1.AgentService/CreateRun") > 0
                     && rate("agent", "/agentmesh.agent.v1.AgentService/CreateRun") > 0
                     && rate("rag", "/agentmesh.rag.v1.RagService/Search") > 0;""",
                "CreateRun and Search in the method table with nonzero rates",
                state=lambda: json.dumps(system.console.console.live.snapshot.get("signals")),
            )
            assert browser.find_element(By.ID, "problems").get_attribute("data-prometheus") == "up"
            screenshot(browser, tmp_path, "topology.png")

        await asyncio.to_thread(look)


async def test_a_trace_opened_from_its_id_shows_spans_of_the_three_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: webdriver.Chrome
) -> None:
    async with observed_system(tmp_path, monkeypatch) as system:
        await send_traffic(system.gateway_address, calls=2)
        traces = system.console.console.traces
        full = {"agentmesh-gateway", "agentmesh-agent", "agentmesh-rag"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while not (found := [t for t in traces.recent() if set(t.summary()["services"]) == full]):
            assert loop.time() < deadline, "no trace spanning the three services arrived"
            await asyncio.sleep(0.1)
        trace_id = found[0].trace_id
        # What an operator pastes: a whole log line; the search box finds the id in it.
        log_line = f"rpc finished method=/agentmesh.agent.v1.AgentService/CreateRun trace_id={trace_id} span_id=00f0"

        def look() -> None:
            browser.get(system.console.url + "/")
            box = browser.find_element(By.ID, "trace-search-input")
            box.send_keys(log_line, Keys.ENTER)
            WebDriverWait(browser, WAIT_S).until(lambda d: d.current_url.endswith(f"/traces/{trace_id}"))
            wait_js(
                browser,
                """const services = new Set([...document.querySelectorAll("#waterfall .span-row")]
                     .map((r) => r.dataset.service));
                   return ["gateway", "agent", "rag"].every((s) => services.has(s));""",
                "spans of gateway, agent and rag in the waterfall",
            )
            rows = browser.find_elements(By.CSS_SELECTOR, "#waterfall .span-row")
            rows[0].click()  # a span's attributes open under it
            attributes = browser.find_element(By.CSS_SELECTOR, "#waterfall .span-row.open + .span-attrs")
            assert "rpc.method" in attributes.text
            screenshot(browser, tmp_path, "trace.png")
            browser.get(f"{system.console.url}/traces/{trace_id}")  # and the URL itself opens it
            wait_js(browser, "return document.querySelectorAll('#waterfall .span-row').length >= 5", "the trace by URL")

        await asyncio.to_thread(look)


async def test_a_run_page_shows_its_states_and_receives_a_live_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: webdriver.Chrome
) -> None:
    async with observed_system(tmp_path, monkeypatch) as system:
        await send_traffic(system.gateway_address, calls=1)  # seeds the knowledge base
        async with grpc.aio.insecure_channel(system.gateway_address, options=FRESH_CONNECTIONS) as channel:
            agent = agent_service_pb2_grpc.AgentServiceStub(channel)
            created = await agent.CreateRun(
                agent_service_pb2.CreateRunRequest(question="How long must passwords be?", request_id="review-me"),
                timeout=10,
            )
            run_id = created.run.run_id
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while (await agent.GetRun(agent_service_pb2.GetRunRequest(run_id=run_id), timeout=5)).run.state != (
                run_pb2.Run.STATE_WAITING_FOR_REVIEW
            ):
                assert loop.time() < deadline, "the run never waited for review"
                await asyncio.sleep(0.1)

            def open_run() -> int:
                browser.get(f"{system.console.url}/runs/{run_id}")
                wait_js(
                    browser,
                    """return ["IDLE", "PROCESSING", "WAITING_FOR_REVIEW"].every(
                         (s) => document.querySelector(`#run-states g.state.passed[data-state="${s}"]`))
                       && document.querySelector('#run-stream').textContent === "watching";""",
                    "the states the run passed, and WatchRun connected",
                )
                steps = browser.find_element(By.ID, "run-steps").text
                assert "retrieve" in steps and "decide" in steps
                return len(browser.find_elements(By.CSS_SELECTOR, "#run-events li"))

            before = await asyncio.to_thread(open_run)
            await agent.SubmitReview(
                agent_service_pb2.SubmitReviewRequest(
                    run_id=run_id, decision=agent_service_pb2.SubmitReviewRequest.DECISION_APPROVE, comment="fine"
                ),
                timeout=10,
            )

            def see_live_event() -> None:
                wait_js(
                    browser,
                    """return document.querySelector('#run-states g.state.passed.current[data-state="COMPLETED"]')
                       && document.querySelector('#run-events li[data-type="run.state_changed"]:last-child')
                            .textContent.includes("WAITING_FOR_REVIEW → COMPLETED");""",
                    "the approval arriving live as WAITING_FOR_REVIEW → COMPLETED",
                )
                assert len(browser.find_elements(By.CSS_SELECTOR, "#run-events li")) > before
                assert browser.find_element(By.ID, "run-state").text == "COMPLETED"
                screenshot(browser, tmp_path, "run.png")

            await asyncio.to_thread(see_live_event)


async def test_without_prometheus_the_page_says_so_and_still_draws_the_mesh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: webdriver.Chrome
) -> None:
    async with observed_system(tmp_path, monkeypatch, with_prometheus=False) as system:
        await send_traffic(system.gateway_address, calls=1)

        def look() -> None:
            browser.get(system.console.url + "/")
            wait_js(
                browser,
                """const banner = document.getElementById("problems");
                   return !banner.hidden && banner.textContent.includes("Prometheus is unavailable")
                     && ["gateway", "agent", "rag"].every(
                          (s) => document.querySelector(`#topology g.node[data-service="${s}"]`))
                     && document.querySelector('#topology g.edge[data-source="agent"][data-target="rag"]')
                     && document.getElementById("methods").innerText.includes("Prometheus is unavailable");""",
                # Checked in the page in one go: the live refresh replaces #methods, so an element
                # found first and read afterwards may already be gone (a stale element reference).
                "the Prometheus banner over a topology still drawn from discovery and traces,"
                " and the methods table saying why it is empty",
            )

        await asyncio.to_thread(look)


async def test_a_failed_run_s_page_shows_each_compensation_the_saga_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: webdriver.Chrome
) -> None:
    async with observed_system(tmp_path, monkeypatch) as system:  # with Prometheus: the picture has no banner
        await send_traffic(system.gateway_address, calls=0)
        await system.servers.pop("rag").stop()  # the budget is reserved, then retrieval fails
        async with grpc.aio.insecure_channel(system.gateway_address, options=FRESH_CONNECTIONS) as channel:
            created = await agent_service_pb2_grpc.AgentServiceStub(channel).CreateRun(
                agent_service_pb2.CreateRunRequest(question="How long do refunds take?", request_id="fails"),
                timeout=10,
            )

        def look() -> None:
            browser.get(f"{system.console.url}/runs/{created.run.run_id}")
            wait_js(
                browser,
                """return document.querySelector('#run-states g.state.passed.current[data-state="FAILED"]')
                   && document.querySelector('#run-steps li.compensated[data-step="reserve_budget"]')
                   && document.querySelector('#run-events li[data-type="run.step_compensated"]');""",
                "the run FAILED with its reserved budget compensated",
            )
            steps = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#run-steps li")]
            assert [s.split(" ")[0] for s in steps] == ["validate", "reserve_budget", "reserve_budget", "run"]
            assert "later compensated" in steps[1] and "compensated (undone)" in steps[2]
            screenshot(browser, tmp_path, "run-failed.png")

        await asyncio.to_thread(look)
