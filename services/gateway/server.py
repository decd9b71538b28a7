"""Assemble the gateway: routes from configuration, byte forwarding, reflection of every routed service."""

from __future__ import annotations

from interceptors._typing import ServerInterceptorBase
from interceptors.rate_limit import RateLimiter, RateLimitInterceptor
from runtime.bootstrap import ServerPlan
from runtime.resilience import upstream_guards
from runtime.security import auth_interceptor
from runtime.upstreams import StaticUpstreams
from services.gateway.config import GatewaySettings
from services.gateway.proxy import RoutingHandler
from services.gateway.routing import build_routes, load_descriptor_pool


def gateway_interceptors(settings: GatewaySettings) -> list[ServerInterceptorBase]:
    """Auth, then rate limits: quotas are per verified caller."""
    auth = auth_interceptor(settings.auth, service="gateway")
    limits = settings.rate_limits
    rate_limit = RateLimitInterceptor(limiter=RateLimiter(limits)) if limits.limits or limits.caller_limits else None
    return [interceptor for interceptor in (auth, rate_limit) if interceptor is not None]


async def build(settings: GatewaySettings) -> ServerPlan:
    pool = load_descriptor_pool(settings.descriptor_set)
    routes = build_routes(settings.routes, pool)
    guards = upstream_guards(settings.upstream_resilience, target_of=lambda method: routes[method].backend, pool=pool)
    upstreams = StaticUpstreams(settings.backends, interceptors=guards.interceptors)
    return ServerPlan(
        settings=settings,
        bindings=[],
        interceptors=gateway_interceptors(settings),
        generic_handlers=[RoutingHandler(routes, upstreams)],
        reflection_names=sorted(settings.routes),
        reflection_pool=pool,
        on_stopped=[upstreams.close],
    )
