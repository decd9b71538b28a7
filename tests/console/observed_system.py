"""The system as `make run` watches it, for the console's tests: services exporting metrics and
spans, a real Prometheus scraping them, and the console itself, all in temp dirs on free ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from agentmesh.rag.v1 import document_pb2, rag_service_pb2, rag_service_pb2_grpc
from console.config import ConsoleSettings
from console.server import RunningConsole, running_console
from runtime.bootstrap import ManagedServer
from tests.ports import free_ports
from tests.system import start_agent, start_gateway, start_rag
from tools.prometheus import PrometheusProcess, ScrapeTarget, binary

SERVICES = ("rag", "agent", "gateway")


def needs_prometheus() -> None:
    if binary() is None:
        pytest.skip("prometheus is not installed (make debian-deps: apt-get install -y prometheus)")


@dataclass
class ObservedSystem:
    console: RunningConsole
    prometheus: PrometheusProcess | None
    servers: dict[str, ManagedServer]

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.servers['gateway'].port}"


# grpc shares subchannels across a process's channels: one left in connection backoff by an earlier
# test whose server on this (reused) port had stopped would fail these calls at once with that
# test's "Connection refused". Each channel here connects on its own.
FRESH_CONNECTIONS = (("grpc.use_local_subchannel_pool", 1),)


@asynccontextmanager
async def observed_system(
    work_dir: Path, monkeypatch: pytest.MonkeyPatch, *, with_prometheus: bool = True
) -> AsyncIterator[ObservedSystem]:
    # Spans leave each service within a tenth of a second rather than the SDK's default five.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    ports = free_ports(2 * len(SERVICES) + 1)
    grpc_ports = dict(zip(SERVICES, ports[0:3], strict=True))
    metrics_ports = dict(zip(SERVICES, ports[3:6], strict=True))
    prometheus_port = ports[6]
    settings = ConsoleSettings(
        _env_file=None,
        port=0,
        otlp_port=0,
        prometheus_url=f"http://127.0.0.1:{prometheus_port}",
        gateway=f"127.0.0.1:{grpc_ports['gateway']}",
        targets={name: [f"127.0.0.1:{port}"] for name, port in grpc_ports.items()},
        refresh_s=0.5,
        rate_window="10s",
    )
    prometheus = None
    if with_prometheus:
        needs_prometheus()
        prometheus = PrometheusProcess(
            [ScrapeTarget(n, "v1", f"127.0.0.1:{grpc_ports[n]}", f"127.0.0.1:{metrics_ports[n]}") for n in SERVICES],
            work_dir=work_dir / "prometheus",
            port=prometheus_port,
            interval_s=1.0,
        )
        await prometheus.start()
    servers: dict[str, ManagedServer] = {}
    try:
        async with running_console(settings) as console:
            observed = {
                name: {
                    "port": grpc_ports[name],
                    "metrics_port": metrics_ports[name],
                    "otlp_endpoint": f"http://127.0.0.1:{console.console.otlp_port}",
                }
                for name in SERVICES
            }
            rag_address = f"127.0.0.1:{grpc_ports['rag']}"
            try:
                servers["rag"] = await start_rag(work_dir, **observed["rag"])
                servers["agent"] = await start_agent(work_dir, rag_address, **observed["agent"])
                servers["gateway"] = await start_gateway(
                    {"agent": [f"127.0.0.1:{grpc_ports['agent']}"], "rag": [rag_address]}, **observed["gateway"]
                )
                yield ObservedSystem(console, prometheus, servers)
            finally:
                for name in ("gateway", "agent", "rag"):
                    if name in servers:
                        await servers[name].stop()
    finally:
        if prometheus is not None:
            await prometheus.stop()


async def send_traffic(gateway: str, *, calls: int) -> list[str]:
    """Seed three documents, then ``calls`` new runs and searches through the gateway; the run ids."""
    async with grpc.aio.insecure_channel(gateway, options=FRESH_CONNECTIONS) as channel:
        rag = rag_service_pb2_grpc.RagServiceStub(channel)
        agent = agent_service_pb2_grpc.AgentServiceStub(channel)
        await rag.IngestDocuments(
            rag_service_pb2.IngestDocumentsRequest(
                documents=[
                    document_pb2.Document(document_id="refunds", text="Refunds take five business days."),
                    document_pb2.Document(document_id="shipping", text="Shipping takes two days in the EU."),
                    document_pb2.Document(
                        document_id="security", text="Passwords must be at least 12 characters long."
                    ),
                ]
            ),
            timeout=10,
        )
        run_ids = []
        for _ in range(calls):
            created = await agent.CreateRun(
                agent_service_pb2.CreateRunRequest(question="How long do refunds take?", request_id=uuid.uuid4().hex),
                timeout=10,
            )
            run_ids.append(created.run.run_id)
            await rag.Search(rag_service_pb2.SearchRequest(query="shipping", top_k=2), timeout=10)
        return run_ids
