"""Assemble the agent service's server from its settings (shared bootstrap)."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import SpanProcessor

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from agentmesh.rag.v1 import rag_service_pb2_grpc
from runtime.bootstrap import ServerPlan, ServiceBinding
from runtime.middleware import Middleware
from runtime.resilience import upstream_guards
from runtime.security import auth_interceptor
from runtime.upstreams import StaticUpstreams
from services.agent.config import AgentSettings
from services.agent.run_store import RunStore
from services.agent.servicer import AgentServicer

SERVICE_NAME = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


async def build(settings: AgentSettings, *, span_processors: Sequence[SpanProcessor] = ()) -> ServerPlan:
    middleware = Middleware.start(
        settings,
        service="agent",
        auth=auth_interceptor(settings.auth, service="agent"),
        span_processors=span_processors,
    )
    store = RunStore(settings.data_dir / "agent.sqlite3")
    await store.open()
    guards = upstream_guards(
        settings.upstream_resilience,
        target_of=lambda _method: "rag",
        on_state_change=middleware.metrics.breaker_state_changed,
    )
    upstreams = StaticUpstreams(
        {"rag": settings.rag_endpoints},
        interceptors=middleware.client_interceptors(
            forwarding=guards.forwarding, retry=guards.retry, circuit_breaker=guards.circuit_breaker
        ),
    )
    rag = rag_service_pb2_grpc.RagServiceStub(upstreams.channel("rag"))
    servicer = AgentServicer(store, rag, settings)
    return ServerPlan(
        settings=settings,
        bindings=[
            ServiceBinding(
                SERVICE_NAME, lambda s: agent_service_pb2_grpc.add_AgentServiceServicer_to_server(servicer, s)
            )
        ],
        interceptors=middleware.server_interceptors,
        on_stopped=[upstreams.close, store.close, middleware.close],
    )
