"""Assemble the agent service's server from its settings (shared bootstrap)."""

from __future__ import annotations

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from agentmesh.rag.v1 import rag_service_pb2_grpc
from runtime.bootstrap import ServerPlan, ServiceBinding
from runtime.resilience import upstream_guards
from runtime.security import auth_interceptor
from runtime.upstreams import StaticUpstreams
from services.agent.config import AgentSettings
from services.agent.run_store import RunStore
from services.agent.servicer import AgentServicer

SERVICE_NAME = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


async def build(settings: AgentSettings) -> ServerPlan:
    store = RunStore(settings.data_dir / "agent.sqlite3")
    await store.open()
    guards = upstream_guards(settings.upstream_resilience, target_of=lambda _method: "rag")
    upstreams = StaticUpstreams({"rag": settings.rag_endpoints}, interceptors=guards.interceptors)
    rag = rag_service_pb2_grpc.RagServiceStub(upstreams.channel("rag"))
    servicer = AgentServicer(store, rag, settings)
    auth = auth_interceptor(settings.auth, service="agent")
    return ServerPlan(
        settings=settings,
        interceptors=[] if auth is None else [auth],
        bindings=[
            ServiceBinding(
                SERVICE_NAME, lambda s: agent_service_pb2_grpc.add_AgentServiceServicer_to_server(servicer, s)
            )
        ],
        on_stopped=[upstreams.close, store.close],
    )
