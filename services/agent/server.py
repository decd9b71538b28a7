"""Assemble the agent service's server from its settings (shared bootstrap)."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import SpanProcessor

from agentmesh.agent.v1 import agent_service_pb2, agent_service_pb2_grpc
from agentmesh.rag.v1 import rag_service_pb2_grpc
from runtime.bootstrap import ServerPlan, ServiceBinding
from runtime.discovery.factory import build_upstreams
from runtime.discovery.server_hooks import add_registration
from runtime.discovery.settings import DiscoverySettings
from runtime.live_config import live_config_for
from runtime.middleware import Middleware
from runtime.resilience import upstream_guards
from runtime.security import auth_interceptor
from services.agent.config import AgentSettings
from services.agent.run_store import RunStore
from services.agent.servicer import AgentServicer

SERVICE_NAME = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name


async def build(
    settings: AgentSettings,
    discovery: DiscoverySettings | None = None,
    *,
    span_processors: Sequence[SpanProcessor] = (),
) -> ServerPlan:
    discovery = discovery or DiscoverySettings()
    # Dynamic settings (rate limits, breaker thresholds, route weights, flags); what enforces
    # them subscribes here: `live_config.subscribe(on_change)`, `live_config.current`.
    live_config = live_config_for(discovery, service="agent", data_dir=settings.data_dir)
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
    # Retries are the retry interceptor's alone (it honours RetryInfo, the deadline and the
    # breaker); the channels add no service-config retryPolicy on top.
    upstreams = await build_upstreams(
        discovery,
        static={"rag": settings.rag_endpoints},
        interceptors=middleware.client_interceptors(
            forwarding=guards.forwarding, retry=guards.retry, circuit_breaker=guards.circuit_breaker
        ),
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
        interceptors=middleware.server_interceptors,
        on_stopped=[upstreams.close, store.close, middleware.close],
    )
    add_registration(plan, discovery, service="agent")
    live_config.attach(plan)
    return plan
