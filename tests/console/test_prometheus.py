"""Golden signals come from a real Prometheus scraping the real services, asked with PromQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from console.prometheus import GoldenSignals, PrometheusUnavailable, PromQL, Signals
from tests.console.observed_system import observed_system, send_traffic
from tests.ports import free_port
from tools.prometheus import scrape_config

pytestmark = pytest.mark.slow

CREATE_RUN = "/agentmesh.agent.v1.AgentService/CreateRun"
SEARCH = "/agentmesh.rag.v1.RagService/Search"


async def signals_with_traffic(
    gateway: str, signals: GoldenSignals, ready: Callable[[Signals], bool], *, within_s: float = 40
) -> Signals:
    """Keep a little traffic flowing (rate() needs two scrapes that differ) until ``ready(read)``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        await send_traffic(gateway, calls=2)
        read = await signals.read()
        if ready(read):
            return read
        if loop.time() > deadline:
            raise AssertionError(f"Prometheus never showed the traffic: {read.to_json()}")
        await asyncio.sleep(0.5)


async def test_rates_latencies_and_instances_of_the_calls_just_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with observed_system(tmp_path, monkeypatch) as system:
        assert system.prometheus is not None
        promql = PromQL(system.prometheus.url)
        try:
            signals = GoldenSignals(promql, window="10s")

            def all_seen(read: Signals) -> bool:
                rates = read.method_rates()
                return all(
                    key in rates and rates[key].rate > 0 and rates[key].p50_ms is not None
                    for key in [("gateway", CREATE_RUN), ("agent", CREATE_RUN), ("gateway", SEARCH), ("rag", SEARCH)]
                )

            read = await signals_with_traffic(system.gateway_address, signals, all_seen)
            rates = read.method_rates()
            assert rates[("gateway", CREATE_RUN)].errors == {}
            assert rates[("gateway", CREATE_RUN)].p99_ms >= rates[("gateway", CREATE_RUN)].p50_ms  # type: ignore[operator]
            assert {service for (service, _, _) in read.instances} == {"gateway", "agent", "rag"}
            assert all(read.scrape_up.values()) and len(read.scrape_up) == 3
            assert not any(method.startswith("/grpc.") for _, method in rates)  # probes are not traffic
        finally:
            await promql.aclose()


async def test_errors_are_counted_by_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc  # noqa: PLC0415

    from agentmesh.rag.v1 import rag_service_pb2, rag_service_pb2_grpc  # noqa: PLC0415

    async with observed_system(tmp_path, monkeypatch) as system:
        assert system.prometheus is not None
        promql = PromQL(system.prometheus.url)
        try:
            signals = GoldenSignals(promql, window="10s")

            async def invalid_searches() -> None:
                async with grpc.aio.insecure_channel(system.gateway_address) as channel:
                    rag = rag_service_pb2_grpc.RagServiceStub(channel)
                    for _ in range(3):
                        with pytest.raises(grpc.aio.AioRpcError):
                            await rag.Search(rag_service_pb2.SearchRequest(query="x", top_k=0), timeout=5)

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 40
            while True:
                await invalid_searches()
                rates = (await signals.read()).method_rates()
                found = rates.get(("gateway", SEARCH))
                if found is not None and found.errors.get("INVALID_ARGUMENT", 0) > 0:
                    break
                assert loop.time() < deadline, "Prometheus never showed the INVALID_ARGUMENT calls"
                await asyncio.sleep(0.5)
            assert found.error_rate == pytest.approx(1.0)
        finally:
            await promql.aclose()


async def test_prometheus_that_does_not_answer_is_reported_as_unavailable() -> None:
    promql = PromQL(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    try:
        with pytest.raises(PrometheusUnavailable, match="did not answer"):
            await GoldenSignals(promql).read()
    finally:
        await promql.aclose()


def test_the_scrape_config_labels_every_target_with_its_service_version_and_grpc_address() -> None:
    import json  # noqa: PLC0415

    from tools.prometheus import ScrapeTarget  # noqa: PLC0415

    config = json.loads(scrape_config([ScrapeTarget("agent", "v2", "127.0.0.1:50072", "127.0.0.1:9472")], interval_s=2))
    (job,) = config["scrape_configs"]
    assert job["static_configs"] == [
        {"targets": ["127.0.0.1:9472"], "labels": {"service": "agent", "version": "v2", "grpc": "127.0.0.1:50072"}}
    ]
    assert config["global"]["scrape_interval"] == "2s"
