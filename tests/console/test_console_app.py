"""The console's API over a running system: what works without Prometheus, traces, runs, its token."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from pydantic import SecretStr, ValidationError

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from console.config import ConsoleSettings
from console.server import running_console
from tests.console.observed_system import observed_system, send_traffic
from tests.ports import free_port

pytestmark = pytest.mark.slow


async def wait_for(fetch: Callable[[], Awaitable[Any]], ready: Callable[[Any], bool], *, within_s: float = 30) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        value = await fetch()
        if ready(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met in {within_s}s; last value: {json.dumps(value)[:2000]}")
        await asyncio.sleep(0.2)


async def get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json()


async def test_without_prometheus_the_page_says_so_and_topology_traces_and_runs_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with observed_system(tmp_path, monkeypatch, with_prometheus=False) as system, aiohttp.ClientSession() as http:
        base = system.console.url
        run_ids = await send_traffic(system.gateway_address, calls=2)

        def edges_seen(overview: Any) -> bool:
            edges = {(e["source"], e["target"]) for e in overview["topology"]["edges"]}
            return {("client", "gateway"), ("gateway", "agent"), ("agent", "rag"), ("gateway", "rag")} <= edges

        overview = await wait_for(lambda: get(http, f"{base}/api/overview"), edges_seen)
        assert "did not answer" in overview["problems"]["prometheus"]
        assert overview["signals"] is None
        assert overview["topology"]["source"] == "traces"
        assert overview["topology"]["ejection_source"] == ""  # no Envoy here: nothing can be shown ejected
        nodes = {n["id"]: n for n in overview["topology"]["nodes"]}
        assert {"gateway", "agent", "rag"} <= set(nodes)
        assert all(nodes[name]["health"] == "passing" for name in ("gateway", "agent", "rag"))

        listed = await get(http, f"{base}/api/traces?service=agentmesh-gateway")
        create = next(t for t in listed["traces"] if t["method"].endswith("/CreateRun"))
        trace = await wait_for(
            lambda: get(http, f"{base}/api/traces/{create['trace_id']}"),
            lambda t: {"agentmesh-gateway", "agentmesh-agent", "agentmesh-rag"} <= set(t["services"]),
        )
        assert {s["kind"] for s in trace["span_list"]} == {"SERVER", "CLIENT"}
        assert all(s["attributes"].get("rpc.system") == "grpc" for s in trace["span_list"])

        runs = await get(http, f"{base}/api/runs")
        assert set(run_ids) <= {r["run_id"] for r in runs["runs"]}
        assert runs["state_machine"]["PROCESSING"] == ["CANCELLED", "COMPLETED", "FAILED", "WAITING_FOR_REVIEW"]
        one = await get(http, f"{base}/api/runs/{run_ids[0]}")
        assert one["run"]["question"] == "How long do refunds take?"


async def test_a_run_s_events_stream_from_watch_run_as_server_sent_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with observed_system(tmp_path, monkeypatch, with_prometheus=False) as system, aiohttp.ClientSession() as http:
        (run_id,) = await send_traffic(system.gateway_address, calls=1)
        events = await _run_events(
            http,
            f"{system.console.url}/api/runs/{run_id}/events",
            until=("COMPLETED", "WAITING_FOR_REVIEW", "FAILED"),
            within=20,
        )
        assert events[0]["type"] == "run.created"
        assert [e["sequence"] for e in events] == sorted(e["sequence"] for e in events)
        assert any(e["type"] == "run.step_completed" and e["cause"].startswith("retrieve:") for e in events)


async def _run_events(
    http: aiohttp.ClientSession, url: str, *, until: tuple[str, ...], within: float = 30
) -> list[dict[str, Any]]:
    """A run's server-sent events, up to the first that moves it to a state in ``until``."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(within), http.get(url) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = ""
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "run-event":
                events.append(json.loads(line.split(":", 1)[1]))
                if events[-1]["to_state"] in until:
                    break
    return events


async def test_a_run_whose_retrieval_fails_lists_the_compensation_of_its_reserved_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with observed_system(tmp_path, monkeypatch, with_prometheus=False) as system, aiohttp.ClientSession() as http:
        await send_traffic(system.gateway_address, calls=0)  # the documents, while rag is still up
        await system.servers.pop("rag").stop()  # validate and reserve_budget complete; retrieve fails
        async with grpc.aio.insecure_channel(system.gateway_address) as channel:
            created = await agent_service_pb2_grpc.AgentServiceStub(channel).CreateRun(
                agent_service_pb2.CreateRunRequest(question="How long do refunds take?", request_id=uuid.uuid4().hex),
                timeout=10,
            )
        url = f"{system.console.url}/api/runs/{created.run.run_id}/events"
        events = await _run_events(http, url, until=("FAILED", "COMPLETED", "WAITING_FOR_REVIEW"))

    assert events[-1]["to_state"] == "FAILED" and events[-1]["cause"].startswith("retrieve failed")
    steps = [(e["type"], e["cause"].split(":")[0]) for e in events if e["type"] != "run.state_changed"]
    assert steps[1:] == [
        ("run.step_completed", "validate"),
        ("run.step_completed", "reserve_budget"),
        ("run.step_compensated", "reserve_budget"),
    ]


async def test_trace_ids_are_checked_and_an_unknown_one_is_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with observed_system(tmp_path, monkeypatch, with_prometheus=False) as system, aiohttp.ClientSession() as http:
        async with http.get(f"{system.console.url}/api/traces/not-a-trace-id") as response:
            assert response.status == 400
            assert "32 hex digits" in (await response.json())["error"]
        async with http.get(f"{system.console.url}/api/traces/{'ab' * 16}") as response:
            assert response.status == 404
            assert "most recent traces" in (await response.json())["error"]


def test_bound_beyond_loopback_the_console_refuses_to_start_without_a_token() -> None:
    with pytest.raises(ValidationError, match="AGENTMESH_CONSOLE_TOKEN"):
        ConsoleSettings(_env_file=None, host="0.0.0.0")
    assert ConsoleSettings(_env_file=None, host="0.0.0.0", token=SecretStr("s3cret")).token is not None


async def test_with_a_token_every_request_must_carry_it() -> None:
    settings = ConsoleSettings(
        _env_file=None,
        port=0,
        otlp_port=0,
        token=SecretStr("s3cret"),
        prometheus_url=f"http://127.0.0.1:{free_port()}",
    )
    # unsafe=True: aiohttp keeps no cookies for IP-address hosts otherwise; a browser does.
    jar = aiohttp.CookieJar(unsafe=True)
    async with running_console(settings) as console, aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(f"{console.url}/api/traces") as response:
            assert response.status == 401
        async with http.get(f"{console.url}/", headers={"authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        async with http.get(f"{console.url}/api/traces", headers={"authorization": "Bearer s3cret"}) as response:
            assert response.status == 200
        async with http.get(f"{console.url}/?token=s3cret") as response:  # a browser: then a cookie
            assert response.status == 200
            assert response.cookies["agentmesh_console_token"].value == "s3cret"
        async with http.get(f"{console.url}/api/traces") as response:
            assert response.status == 200  # the cookie jar sent it
