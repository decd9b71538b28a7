"""Assemble the gateway: routes from configuration, byte forwarding, reflection of every routed service."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import SpanProcessor

from runtime.bootstrap import ServerPlan
from runtime.middleware import Middleware
from runtime.upstreams import StaticUpstreams
from services.gateway.config import GatewaySettings
from services.gateway.proxy import RoutingHandler
from services.gateway.routing import build_routes, load_descriptor_pool


async def build(settings: GatewaySettings, *, span_processors: Sequence[SpanProcessor] = ()) -> ServerPlan:
    middleware = Middleware.start(settings, service="gateway", span_processors=span_processors)
    pool = load_descriptor_pool(settings.descriptor_set)
    routes = build_routes(settings.routes, pool)
    upstreams = StaticUpstreams(settings.backends, interceptors=middleware.client_interceptors())
    return ServerPlan(
        settings=settings,
        bindings=[],
        generic_handlers=[RoutingHandler(routes, upstreams)],
        reflection_names=sorted(settings.routes),
        reflection_pool=pool,
        interceptors=middleware.server_interceptors,
        on_stopped=[upstreams.close, middleware.close],
    )
