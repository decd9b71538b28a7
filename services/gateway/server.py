"""Assemble the gateway: routes from configuration, byte forwarding, reflection of every routed service."""

from __future__ import annotations

from runtime.bootstrap import ServerPlan
from runtime.upstreams import StaticUpstreams
from services.gateway.config import GatewaySettings
from services.gateway.proxy import RoutingHandler
from services.gateway.routing import build_routes, load_descriptor_pool


async def build(settings: GatewaySettings) -> ServerPlan:
    pool = load_descriptor_pool(settings.descriptor_set)
    routes = build_routes(settings.routes, pool)
    upstreams = StaticUpstreams(settings.backends)
    return ServerPlan(
        settings=settings,
        bindings=[],
        generic_handlers=[RoutingHandler(routes, upstreams)],
        reflection_names=sorted(settings.routes),
        reflection_pool=pool,
        on_stopped=[upstreams.close],
    )
