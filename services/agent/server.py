"""Assemble the agent service's server from its settings (shared bootstrap)."""

from __future__ import annotations

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from agentmesh.rag.v1 import rag_service_pb2, rag_service_pb2_grpc
from runtime.bootstrap import ServerPlan, ServiceBinding
from runtime.discovery.balanced_channel import idempotent_methods
from runtime.discovery.factory import build_upstreams
from runtime.discovery.server_hooks import add_registration
from runtime.discovery.settings import DiscoverySettings
from runtime.live_config import live_config_for
from services.agent.config import AgentSettings
from services.agent.run_store import RunStore
from services.agent.servicer import AgentServicer

SERVICE_NAME = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


async def build(settings: AgentSettings, discovery: DiscoverySettings | None = None) -> ServerPlan:
    discovery = discovery or DiscoverySettings()
    # Dynamic settings (rate limits, breaker thresholds, route weights, flags); what enforces
    # them subscribes here: `live_config.subscribe(on_change)`, `live_config.current`.
    live_config = live_config_for(discovery, service="agent", data_dir=settings.data_dir)
    store = RunStore(settings.data_dir / "agent.sqlite3")
    await store.open()
    upstreams = await build_upstreams(
        discovery,
        static={"rag": settings.rag_endpoints},
        retry_methods=idempotent_methods(rag_service_pb2.DESCRIPTOR.services_by_name["RagService"]),
    )
    rag = rag_service_pb2_grpc.RagServiceStub(upstreams.channel("rag"))
    servicer = AgentServicer(store, rag, settings)
    plan = ServerPlan(
        settings=settings,
        bindings=[
            ServiceBinding(
                SERVICE_NAME, lambda s: agent_service_pb2_grpc.add_AgentServiceServicer_to_server(servicer, s)
            )
        ],
        on_stopped=[upstreams.close, store.close],
    )
    add_registration(plan, discovery, service="agent")
    live_config.attach(plan)
    return plan
