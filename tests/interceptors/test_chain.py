"""The whole chain in the real services, through the gateway: one trace across client -> gateway ->
agent -> rag, idempotency keys relayed end to end, metrics on each service's HTTP endpoint,
and every access log line of the call carrying its trace id."""

from __future__ import annotations

import asyncio
import itertools
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from interceptors.chain import client_chain
from interceptors.tracing import add_trace_context, setup_tracing
from rpcstatus.errors import status_details
from runtime.bootstrap import ManagedServer
from services.agent.config import AgentSettings
from services.agent.server import build as build_agent
from services.gateway.config import GatewaySettings
from services.gateway.server import build as build_gateway
from services.rag.config import RagSettings
from services.rag.server import build as build_rag
from tests.ports import free_ports
from tests.system import wait_until


@dataclass
class Traced:
    channel: grpc.aio.Channel
    exporter: InMemorySpanExporter
    metrics_ports: dict[str, int]
    grpc_addresses: dict[str, str]


@asynccontextmanager
async def traced_system(data_dir: Path) -> AsyncIterator[Traced]:
    """rag, agent and gateway with every span exported in memory, and a traced client channel."""
    exporter = InMemorySpanExporter()
    spans = [SimpleSpanProcessor(exporter)]
    # Picked together: probes closed one by one could be handed the same port twice.
    ports = dict(zip(("gateway", "agent", "rag"), free_ports(3), strict=True))
    common: dict[str, Any] = {"port": 0, "data_dir": data_dir, "drain_delay_s": 0, "grace_period_s": 1}
    rag = ManagedServer(await build_rag(RagSettings(**common, metrics_port=ports["rag"]), span_processors=spans))
    await rag.start()
    agent = ManagedServer(
        await build_agent(
            AgentSettings(**common, metrics_port=ports["agent"], rag_endpoints=[f"127.0.0.1:{rag.port}"]),
            span_processors=spans,
        )
    )
    await agent.start()
    backends = {"agent": [f"127.0.0.1:{agent.port}"], "rag": [f"127.0.0.1:{rag.port}"]}
    gateway = ManagedServer(
        await build_gateway(
            GatewaySettings(**common, metrics_port=ports["gateway"], backends=backends), span_processors=spans
        )
    )
    await gateway.start()
    client_tracing = setup_tracing(service_name="client", span_processors=spans)
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{gateway.port}", interceptors=client_chain(tracing=client_tracing, deadline_margin_s=0)
        ) as channel:
            addresses = {
                name: f"127.0.0.1:{s.port}" for name, s in (("gateway", gateway), ("agent", agent), ("rag", rag))
            }
            yield Traced(channel, exporter, ports, addresses)
    finally:
        for server in (gateway, agent, rag):
            await server.stop()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


async def test_one_trace_runs_from_the_client_through_gateway_and_agent_to_rag(tmp_path: Path) -> None:
    async with traced_system(tmp_path) as system:
        with capture_logs(processors=[add_trace_context]) as logs:
            await agent_grpc.AgentServiceStub(system.channel).CreateRun(
                agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question="How long do refunds take?"),
                timeout=10,
            )

            # The agent retrieves in the background, within the CreateRun trace; wait for that call.
            async def retrieved() -> bool:
                return any(
                    s.kind is SpanKind.CLIENT and s.name.endswith("/Search")
                    for s in system.exporter.get_finished_spans()
                )

            await wait_until(retrieved)
        finished = system.exporter.get_finished_spans()

    def span(kind: SpanKind, service: str, method: str) -> Any:
        [found] = [
            s
            for s in finished
            if s.kind is kind and s.resource.attributes["service.name"] == service and s.name.endswith(method)
        ]
        return found

    chain = [
        span(SpanKind.CLIENT, "client", "/CreateRun"),
        span(SpanKind.SERVER, "agentmesh-gateway", "/CreateRun"),
        span(SpanKind.CLIENT, "agentmesh-gateway", "/CreateRun"),
        span(SpanKind.SERVER, "agentmesh-agent", "/CreateRun"),
        span(SpanKind.CLIENT, "agentmesh-agent", "/Search"),
        span(SpanKind.SERVER, "agentmesh-rag", "/Search"),
    ]
    trace_ids = {s.context.trace_id for s in chain}
    assert len(trace_ids) == 1
    for parent, child in itertools.pairwise(chain):
        assert child.parent.span_id == parent.context.span_id
    access = [line for line in logs if line["event"] == "rpc finished"]
    assert sorted(line["method"] for line in access) == [
        "/agentmesh.agent.v1.AgentService/CreateRun",
        "/agentmesh.agent.v1.AgentService/CreateRun",
        "/agentmesh.rag.v1.RagService/Search",
    ]
    assert {line["trace_id"] for line in logs} == {format(trace_ids.pop(), "032x")}


async def test_a_retried_create_run_is_replayed_through_the_gateway(tmp_path: Path) -> None:
    request = agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question="How long do refunds take?")
    async with traced_system(tmp_path) as system:
        create = agent_grpc.AgentServiceStub(system.channel).CreateRun
        first = create(request, timeout=10)
        first_run = (await first).run
        second = create(request, timeout=10)
        assert (await second).run.run_id == first_run.run_id
        assert ("idempotency-replayed", "true") not in tuple(await first.trailing_metadata())
        assert ("idempotency-replayed", "true") in tuple(await second.trailing_metadata())

        reused = agent_pb.CreateRunRequest(request_id=request.request_id, question="Something else?")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(reused, timeout=10)
        create_run = 'grpc_method="CreateRun",grpc_service="agentmesh.agent.v1.AgentService",grpc_type="unary"'
        refused = f'grpc_server_handled_total{{grpc_code="INVALID_ARGUMENT",{create_run}}} 1.0'
        metrics = ""
        async with asyncio.timeout(10):
            while refused not in metrics:  # the refusal reaches the client before the server counts it
                metrics = await asyncio.to_thread(_scrape, system.metrics_ports["agent"])
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    reasons = [getattr(detail, "reason", None) for detail in status_details(caught.value)]
    assert "IDEMPOTENCY_KEY_REUSED" in reasons
    assert f'grpc_server_handled_total{{grpc_code="OK",{create_run}}} 2.0' in metrics


@pytest.mark.parametrize(("key", "problem"), [("", "must not be empty"), ("x" * 300, "at most 255 characters")])
async def test_a_bad_idempotency_key_is_refused_through_the_gateway(tmp_path: Path, key: str, problem: str) -> None:
    async with traced_system(tmp_path) as system:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await agent_grpc.AgentServiceStub(system.channel).CreateRun(
                agent_pb.CreateRunRequest(question="How long do refunds take?"),
                metadata=(("idempotency-key", key),),
                timeout=10,
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (caught.value.details() or "")


def _served_methods(pool_names: list[str]) -> set[tuple[str, str]]:
    pool = descriptor_pool.Default()
    return {(name, m.name) for name in pool_names for m in pool.FindServiceByName(name).methods}


async def _listed_services(channel: grpc.aio.Channel) -> list[str]:
    """What the server says it serves, through its own reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    async for response in call:
        return [s.name for s in response.list_services_response.service]
    raise AssertionError("reflection answered nothing")


async def test_a_fresh_server_exposes_every_method_it_serves_at_zero_before_any_call(tmp_path: Path) -> None:
    """Prometheus's rate() counts increases of a series it has seen: a method's series must exist
    from start-up, or its first calls after a start never show in a rate."""
    async with traced_system(tmp_path) as system:
        scraped = {name: await asyncio.to_thread(_scrape, port) for name, port in system.metrics_ports.items()}
        served = {}
        for name, address in system.grpc_addresses.items():
            async with grpc.aio.insecure_channel(address) as channel:
                served[name] = _served_methods(await _listed_services(channel))
    for name, text in scraped.items():
        families = {f.name: f for f in text_string_to_metric_families(text)}
        ok = {
            (s.labels["grpc_service"], s.labels["grpc_method"]): s.value
            for s in families["grpc_server_handled"].samples
            if s.name == "grpc_server_handled_total" and s.labels["grpc_code"] == "OK"
        }
        timed = {
            (s.labels["grpc_service"], s.labels["grpc_method"]): s.value
            for s in families["grpc_server_handling_seconds"].samples
            if s.name == "grpc_server_handling_seconds_count"
        }
        assert served[name] >= {
            ("grpc.health.v1.Health", "Check"),
            ("grpc.reflection.v1.ServerReflection", "ServerReflectionInfo"),
        }
        for method in sorted(served[name]):
            assert ok.get(method) == 0.0, f"{name}: no zero-valued OK series for {method} before its first call"
            assert timed.get(method) == 0.0, f"{name}: no zero-valued latency histogram for {method}"
