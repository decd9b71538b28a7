"""What every service's ``build()`` shares: one lifespan, live config, the chain, registration.

A service's ``build()`` adds only its own parts, inside ``assembling()``::

    async def build(settings, discovery=None, *, dynamic=None, span_processors=()) -> ServerPlan:
        async with assembling(settings, service="rag", discovery=discovery, dynamic=dynamic,
                              span_processors=span_processors) as service:
            store = service.life.closing(await open_database(...))
            servicer = RagServicer(...)
            return service.plan([ServiceBinding(SERVICE_NAME, lambda s: add_RagServiceServicer_to_server(servicer, s))])

Everything opened inside registers its close on ``service.life`` where it is opened; if the
body fails half-way, what was opened so far (the chain's metrics endpoint and idempotency store
included) is closed, last opened first, and the error re-raised (``runtime.lifespan``).
``plan()`` hands the lifespan to the bootstrap with the service's bindings, and adds what every
service does once it listens, after the service's own start-up hooks: follow live config, and
register with discovery (deregistering first when a drain begins).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from google.protobuf import descriptor_pool
from opentelemetry.sdk.trace import SpanProcessor

from interceptors.layer import Concern
from runtime.bootstrap import ServerPlan, ServiceBinding
from runtime.chains import ServiceChains
from runtime.config import ServiceSettings
from runtime.discovery.server_hooks import add_registration
from runtime.discovery.settings import DiscoverySettings
from runtime.lifespan import Lifespan
from runtime.live_config.kv import LiveConfig, live_config_for
from runtime.live_config.settings import DynamicSettings
from runtime.security import auth_interceptor


@dataclass
class Assembly:
    """The parts every service has, for its ``build()`` to use and add to."""

    name: str  # "gateway", "agent", "rag": metrics, traces, KV prefix, registration
    settings: ServiceSettings
    discovery: DiscoverySettings
    life: Lifespan
    # Dynamic settings (rate limits, breaker thresholds, route weights, flags); what enforces
    # them subscribes here: `live_config.subscribe(on_change)`, `live_config.current`.
    live_config: LiveConfig[DynamicSettings]
    chains: ServiceChains

    def plan(
        self,
        bindings: Sequence[ServiceBinding],
        *,
        reflection_names: Sequence[str] = (),
        reflection_pool: descriptor_pool.DescriptorPool | None = None,
    ) -> ServerPlan:
        """The plan to serve ``bindings`` (one per servicer) through the service's chain.

        Call it last: live config and registration start after the start-up hooks registered
        before it (the service's stores are ready before peers are told it exists).
        """
        plan = ServerPlan(
            settings=self.settings,
            bindings=bindings,
            reflection_names=reflection_names,
            reflection_pool=reflection_pool,
            interceptors=self.chains.server_interceptors,
            lifespan=self.life,
        )
        add_registration(plan, self.discovery, service=self.name)
        self.live_config.attach(plan)
        return plan


@contextlib.asynccontextmanager
async def assembling(
    settings: ServiceSettings,
    *,
    service: str,
    discovery: DiscoverySettings | None,
    dynamic: DynamicSettings | None,
    span_processors: Sequence[SpanProcessor] = (),
    rate_limit: Concern | None = None,
    database_url: str = "",
) -> AsyncIterator[Assembly]:
    """Open the shared parts of ``service`` in one lifespan; see the module docstring.

    ``discovery`` and ``dynamic`` are the settings ``run_service`` validated at start; None
    reads them from env/.env (a caller that did not load them, such as a test). ``rate_limit``
    fills the chain's slot; ``database_url`` is the service's own database, where a
    PostgreSQL idempotency store keeps its keys by default (``runtime.chains``).
    """
    discovery = discovery if discovery is not None else DiscoverySettings()
    dynamic = dynamic if dynamic is not None else DynamicSettings()
    async with Lifespan.opening() as life:
        live_config = live_config_for(discovery, dynamic, service=service, data_dir=settings.data_dir)
        chains = ServiceChains.start(
            settings,
            service=service,
            auth=auth_interceptor(settings.auth, service=service),
            rate_limit=rate_limit,
            span_processors=span_processors,
            database_url=database_url,
        )
        life.on_close(chains.close, name="chains")
        yield Assembly(
            name=service,
            settings=settings,
            discovery=discovery,
            life=life,
            live_config=live_config,
            chains=chains,
        )
