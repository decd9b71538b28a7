"""The real agentmesh services, each behind its own sidecar, with the edge in front: all on loopback.

Every hop is mTLS between Envoys; the apps speak plaintext only to their own sidecar, as in a
pod. The edge requires a token from ``issuer`` and every app verifies it again, as
`make run MESH=envoy` runs them.

Ports are free ones, and none is released before its owner binds it (another process could take
it): each app binds port 0 first, so its sidecar is rendered with the port the app got; the ports
the app calls its callees on are held for the mesh's lifetime by a bound, non-listening
SO_REUSEPORT socket, which the sidecar's outbound listener joins (Envoy sets SO_REUSEPORT too;
only listening sockets are given connections); every other Envoy port is 0, read back from the
admin API.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from mesh.app_auth import service_auth
from mesh.edge_config import edge_bootstrap
from mesh.envoy_config import Address, sidecar_bootstrap
from mesh.envoy_process import EnvoyProcess
from mesh.policy import Policy
from runtime.bootstrap import ManagedServer, ServerPlan
from runtime.discovery.settings import DiscoverySettings
from runtime.security import AuthSettings
from services.agent.config import AgentSettings
from services.agent.server import build as build_agent
from services.gateway.config import GatewaySettings
from services.gateway.server import build as build_gateway
from services.rag.config import RagSettings
from services.rag.server import build as build_rag
from tests.mesh.conftest import LOOPBACK, MeshCerts, TokenIssuer
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
# Builds an app given where it reaches each callee (its sidecar's outbound listeners).
Build = Callable[[dict[str, str]], Awaitable[ServerPlan]]
DESCRIPTOR_SET = REPO / "gen" / "agentmesh.pb"


@dataclass
class MeshSystem:
    edge: Address
    envoys: dict[str, EnvoyProcess]
    apps: dict[str, ManagedServer]


def _held_port(stack: AsyncExitStack) -> int:
    """A free loopback port, kept bound until ``stack`` closes so that nothing else takes it."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((LOOPBACK, 0))
    stack.callback(holder.close)
    port: int = holder.getsockname()[1]
    return port


@asynccontextmanager
async def running_mesh(
    policy: Policy,
    certs: MeshCerts,
    issuer: TokenIssuer,
    work_dir: Path,
    *,
    database_urls: dict[str, str] | None = None,
) -> AsyncIterator[MeshSystem]:
    """The mesh; ``database_urls`` (service -> URL) puts agent and rag on PostgreSQL instead of
    SQLite files in ``work_dir`` (which both agent versions share either way)."""
    urls = database_urls or {}
    envoys: dict[str, EnvoyProcess] = {}
    apps: dict[str, ManagedServer] = {}
    async with AsyncExitStack() as stack:

        async def instance(
            name: str,
            service: str,
            version: str,
            upstreams: dict[str, dict[str, list[Address]]],
            build: Build,
            *,
            app_http: Address | None = None,
        ) -> Address:
            """The app on a port of its own, then its sidecar in front of it; the sidecar's inbound address."""
            outbound = {callee: _held_port(stack) for callee in upstreams}
            server = ManagedServer(await build({c: f"{LOOPBACK}:{p}" for c, p in outbound.items()}))
            app_port = await server.start()
            try:
                config = sidecar_bootstrap(
                    policy, service=service, version=version, app=Address(LOOPBACK, app_port),
                    inbound=Address(LOOPBACK, 0), admin_port=0,
                    outbound_ports=outbound, upstreams=upstreams, certs=certs(service), app_http=app_http,
                )  # fmt: skip
                envoy = EnvoyProcess(config, workdir=work_dir, name=f"{name}-sidecar")
                await stack.enter_async_context(envoy)
            except BaseException:
                await server.stop()
                raise
            # Registered after its sidecar, so the app stops first: the exit stack unwinds in reverse.
            stack.push_async_callback(server.stop)
            envoys[name], apps[name] = envoy, server
            return await envoy.listener_address("inbound")

        # As `make run MESH=envoy` runs them: the sidecar health-checks callees, not the app.
        BEHIND_SIDECAR = DiscoverySettings(client_health_checks=False)
        auth = AuthSettings.model_validate(service_auth(policy, str(issuer.jwks_file)))
        quick = {"host": LOOPBACK, "port": 0, "data_dir": work_dir, "drain_delay_s": 0.0, "grace_period_s": 1.0}
        quick["auth"] = auth

        async def rag_app(_: dict[str, str]) -> ServerPlan:
            return await build_rag(RagSettings.model_validate({**quick, "database_url": urls.get("rag", "")}))

        rag = {"rag": {"v1": [await instance("rag-v1", "rag", "v1", {}, rag_app)]}}

        async def agent_app(outbound: dict[str, str]) -> ServerPlan:
            # Both versions share one run store, as one database would serve both in a cluster.
            settings = AgentSettings.model_validate(
                {"rag_endpoints": [outbound["rag"]], "database_url": urls.get("agent", ""), **quick}
            )
            return await build_agent(settings, BEHIND_SIDECAR)

        agents = {
            version: [await instance(f"agent-{version}", "agent", version, rag, agent_app)]
            for version in policy.services["agent"].versions
        }

        # The gateway's HTTP side (MCP, the Agent Card), where the edge's http_routes go.
        gateway_http = Address(LOOPBACK, free_port())

        async def gateway_app(outbound: dict[str, str]) -> ServerPlan:
            backends = {callee: [address] for callee, address in outbound.items()}
            settings = {"backends": backends, "http_port": gateway_http.port, **quick}
            return await build_gateway(GatewaySettings.model_validate(settings), BEHIND_SIDECAR)

        gateway_inbound = await instance(
            "gateway-v1", "gateway", "v1", {"agent": agents, **rag}, gateway_app, app_http=gateway_http
        )

        edge = EnvoyProcess(
            edge_bootstrap(
                policy, listen=Address(LOOPBACK, 0), admin_port=0, upstreams={"v1": [gateway_inbound]},
                certs=certs("edge"), descriptor_set=DESCRIPTOR_SET, jwks_file=issuer.jwks_file,
            ),
            workdir=work_dir, name="edge",
        )  # fmt: skip
        await stack.enter_async_context(edge)
        envoys["edge"] = edge
        yield MeshSystem(edge=await edge.listener_address("edge"), envoys=envoys, apps=apps)
