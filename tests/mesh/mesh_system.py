"""The real agentmesh services, each behind its own sidecar, with the edge in front: all on loopback.

Every hop is mTLS between Envoys; the apps speak plaintext only to their own sidecar, as in a
pod. The edge requires a token from ``issuer`` and every app verifies it again, as
`make run MESH=envoy` runs them. Ports are free ones: Envoys listen on port 0 (read back from their admin API) and each
app's port is reserved just before its sidecar is rendered, since the two must know each other.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from mesh.app_auth import service_auth
from mesh.envoy_config import Address, edge_bootstrap, sidecar_bootstrap
from mesh.envoy_process import EnvoyProcess
from mesh.policy import Policy
from runtime.bootstrap import ManagedServer
from runtime.discovery.settings import DiscoverySettings
from runtime.security import AuthSettings
from services.agent.config import AgentSettings
from services.agent.server import build as build_agent
from services.gateway.config import GatewaySettings
from services.gateway.server import build as build_gateway
from services.rag.config import RagSettings
from services.rag.server import build as build_rag
from tests.mesh.conftest import LOOPBACK, MeshCerts, TokenIssuer

REPO = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = REPO / "gen" / "agentmesh.pb"


@dataclass
class MeshSystem:
    edge: Address
    envoys: dict[str, EnvoyProcess]
    apps: dict[str, ManagedServer]


def _reserve_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def running_mesh(
    policy: Policy, certs: MeshCerts, issuer: TokenIssuer, work_dir: Path
) -> AsyncIterator[MeshSystem]:
    envoys: dict[str, EnvoyProcess] = {}
    apps: dict[str, ManagedServer] = {}
    async with AsyncExitStack() as stack:

        async def sidecar(
            instance: str, service: str, version: str, upstreams: dict[str, dict[str, list[Address]]]
        ) -> tuple[Address, int]:
            app_port = _reserve_port()
            config = sidecar_bootstrap(
                policy, service=service, version=version, app=Address(LOOPBACK, app_port),
                inbound=Address(LOOPBACK, 0), admin_port=0,
                outbound_ports={callee: 0 for callee in upstreams}, upstreams=upstreams, certs=certs(service),
            )  # fmt: skip
            envoy = EnvoyProcess(config, workdir=work_dir, name=f"{instance}-sidecar")
            await stack.enter_async_context(envoy)
            envoys[instance] = envoy
            return await envoy.listener_address("inbound"), app_port

        async def outbound(instance: str, callee: str) -> str:
            address = await envoys[instance].listener_address(f"outbound_{callee}")
            return f"{address.host}:{address.port}"

        async def app(instance: str, server: ManagedServer) -> None:
            await server.start()
            apps[instance] = server
            stack.push_async_callback(server.stop)

        rag_inbound, rag_port = await sidecar("rag-v1", "rag", "v1", {})
        # As `make run MESH=envoy` runs them: the sidecar health-checks callees, not the app.
        BEHIND_SIDECAR = DiscoverySettings(client_health_checks=False)
        auth = AuthSettings.model_validate(service_auth(policy, str(issuer.jwks_file)))
        quick = {"host": LOOPBACK, "data_dir": work_dir, "drain_delay_s": 0.0, "grace_period_s": 1.0, "auth": auth}
        await app("rag-v1", ManagedServer(await build_rag(RagSettings.model_validate({"port": rag_port, **quick}))))
        rag = {"rag": {"v1": [rag_inbound]}}

        agents: dict[str, list[Address]] = {}
        for version in policy.services["agent"].versions:
            instance = f"agent-{version}"
            inbound, port = await sidecar(instance, "agent", version, rag)
            agents[version] = [inbound]
            # Both versions share one run store, as one database would serve both in a cluster.
            rag_endpoints = [await outbound(instance, "rag")]
            settings = AgentSettings.model_validate({"port": port, "rag_endpoints": rag_endpoints, **quick})
            await app(instance, ManagedServer(await build_agent(settings, BEHIND_SIDECAR)))

        gateway_inbound, gateway_port = await sidecar("gateway-v1", "gateway", "v1", {"agent": agents, **rag})
        backends = {callee: [await outbound("gateway-v1", callee)] for callee in ("agent", "rag")}
        gateway = GatewaySettings.model_validate({"port": gateway_port, "backends": backends, **quick})
        await app("gateway-v1", ManagedServer(await build_gateway(gateway, BEHIND_SIDECAR)))

        edge = EnvoyProcess(
            edge_bootstrap(
                policy, listen=Address(LOOPBACK, 0), admin_port=0, upstreams={"v1": [gateway_inbound]},
                certs=certs("edge"), descriptor_set=DESCRIPTOR_SET, jwks_file=issuer.jwks_file,
            ),
            workdir=work_dir, name="edge",
        )  # fmt: skip
        await stack.enter_async_context(edge)
        envoys["edge"] = edge
        # Apps stop before their sidecars: the exit stack unwinds in reverse.
        yield MeshSystem(edge=await edge.listener_address("edge"), envoys=envoys, apps=apps)
