"""Wiring registration into the shared bootstrap: register once listening, deregister first on drain.

The bootstrap's drain turns health NOT_SERVING, then runs the lifespan's ``on_drain`` hooks, then waits
``drain_delay_s`` before stopping: deregistering there takes the instance out of every peer's
passing set while it still finishes the calls it has.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.bootstrap import ServerPlan
from runtime.discovery.factory import build_registrar
from runtime.discovery.registration import ConsulRegistrar
from runtime.discovery.settings import DiscoverySettings
from runtime.processes import is_primary


def add_registration(plan: ServerPlan, settings: DiscoverySettings, *, service: str, tags: Sequence[str] = ()) -> None:
    """Register ``service`` with Consul when discovery is Consul; nothing with static discovery.

    When several processes serve the port (runtime/processes.py) only the primary one registers:
    they are one instance to Consul, whose gRPC health check reaches whichever process accepts it.
    """
    if settings.discovery != "consul" or not is_primary():
        return
    registrars: list[ConsulRegistrar] = []

    async def register(port: int) -> None:
        # Consul's gRPC check must speak TLS to a TLS port (GRPCUseTLS).
        registrar = build_registrar(
            settings, service=service, port=port, tags=tags, grpc_use_tls=plan.settings.tls is not None
        )
        assert registrar is not None
        registrar.start()
        registrars.append(registrar)
        # Normally gone by the drain; this covers a start that failed after registering.
        plan.lifespan.on_close(registrar.deregister, name=f"consul registration {service}")

    async def deregister() -> None:
        for registrar in registrars:
            await registrar.deregister()

    plan.lifespan.on_started(register)
    plan.lifespan.on_drain(deregister, first=True)  # before any other drain work: peers stop picking us first
