"""Assemble the gateway: routes from configuration, byte forwarding, reflection of every routed service."""

from __future__ import annotations

from runtime.bootstrap import ServerPlan
from runtime.discovery.balanced_channel import idempotent_methods
from runtime.discovery.factory import build_upstreams
from runtime.discovery.server_hooks import add_registration
from runtime.discovery.settings import DiscoverySettings
from runtime.live_config import live_config_for
from services.gateway.config import GatewaySettings
from services.gateway.proxy import RoutingHandler
from services.gateway.routing import build_routes, load_descriptor_pool


async def build(settings: GatewaySettings, discovery: DiscoverySettings | None = None) -> ServerPlan:
    discovery = discovery or DiscoverySettings()
    # Dynamic settings (rate limits, breaker thresholds, route weights, flags); what enforces
    # them subscribes here: `live_config.subscribe(on_change)`, `live_config.current`.
    live_config = live_config_for(discovery, service="gateway", data_dir=settings.data_dir)
    pool = load_descriptor_pool(settings.descriptor_set)
    routes = build_routes(settings.routes, pool)
    upstreams = await build_upstreams(
        discovery,
        static=settings.backends,
        retry_methods=idempotent_methods(*(pool.FindServiceByName(name) for name in settings.routes)),
    )
    plan = ServerPlan(
        settings=settings,
        bindings=[],
        generic_handlers=[RoutingHandler(routes, upstreams)],
        reflection_names=sorted(settings.routes),
        reflection_pool=pool,
        on_stopped=[upstreams.close],
    )
    add_registration(plan, discovery, service="gateway")
    live_config.attach(plan)
    return plan
