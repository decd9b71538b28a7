"""Assemble the gateway: routes from configuration, byte forwarding, reflection of every routed service."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import SpanProcessor

from interceptors.deadline import DeadlineBudget
from interceptors.rate_limit import RateLimiter, RateLimitInterceptor
from interceptors.tracing import OutgoingTrace
from runtime.assembly import assembling
from runtime.bootstrap import ServerPlan
from runtime.discovery.factory import build_upstreams
from runtime.discovery.settings import DiscoverySettings
from runtime.live_config.enforce import follow_live_config
from runtime.live_config.settings import DynamicSettings
from runtime.resilience import upstream_guards
from services.gateway.agent_card import agent_card_routes
from services.gateway.config import GatewaySettings
from services.gateway.http_entry import mcp_tools, serve_http_entry
from services.gateway.proxy import Forwarding, route_bindings
from services.gateway.routing import build_routes, load_descriptor_pool


async def build(
    settings: GatewaySettings,
    discovery: DiscoverySettings | None = None,
    *,
    dynamic: DynamicSettings | None = None,
    span_processors: Sequence[SpanProcessor] = (),
) -> ServerPlan:
    # Always in the chain, even with no limits configured (then it passes calls through at the
    # cost of one dict lookup), so that live config can turn limits on without a restart.
    # Quotas are per verified caller: auth runs first (chain.py orders the slots).
    rate_limit = RateLimitInterceptor(limiter=RateLimiter(settings.rate_limits))
    async with assembling(
        settings,
        service="gateway",
        discovery=discovery,
        dynamic=dynamic,
        span_processors=span_processors,
        rate_limit=rate_limit,
    ) as service:
        chains, life = service.chains, service.life
        pool = load_descriptor_pool(settings.descriptor_set)
        routes = build_routes(settings.routes, pool)
        if settings.http_port:
            # MCP tools, calling this gateway's own gRPC port, and the public A2A Agent Card.
            serve_http_entry(
                life, settings, mcp_tools(settings, pool, set(routes)), routes=agent_card_routes(settings.a2a)
            )
        guards = upstream_guards(
            settings.upstream_resilience,
            target_of=lambda method: routes[method].backend,
            pool=pool,
            on_state_change=chains.metrics.breaker_state_changed,
        )
        # No client interceptor on the channels: trace context, deadline, retries and the breaker run
        # inside the proxy's handler (proxy.py). Nor token forwarding: the proxy passes the caller's
        # metadata on, its `authorization` header included.
        upstreams = await build_upstreams(service.discovery, static=settings.backends)
        life.on_close(upstreams.close, name="upstreams")
        await follow_live_config(
            service.live_config, rate_limit=rate_limit, breakers=guards.breakers, upstreams=upstreams
        )
        forwarding = Forwarding(
            upstreams=upstreams,
            breakers=guards.breakers,
            retrier=guards.retrier,
            trace=OutgoingTrace(chains.tracing),
            budget=DeadlineBudget(margin=settings.deadline_margin_s),
        )
        bindings = route_bindings(routes, forwarding)
        bound = {binding.name for binding in bindings}
        return service.plan(
            bindings,
            # Bound services get health and reflection as bindings; a routed service without methods too.
            reflection_names=sorted(set(settings.routes) - bound),
            reflection_pool=pool,
        )
