"""Registering this instance with the local Consul agent, with a gRPC health check.

The instance starts serving whether or not Consul answers: registration runs in the
background, retries with backoff while the agent is unreachable, and re-registers if the
agent loses it (an agent restarted without state). ``deregister`` is called on shutdown
*before* the server drains, so peers stop picking this instance while it finishes its calls.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import consul
import structlog

from runtime.backoff import Backoff
from runtime.discovery.consul_client import CONSUL_ERRORS, ConsulAddress, open_consul
from runtime.supervisor import Outage, SupervisedLoop

log = structlog.get_logger(__name__)


def _outage_event(error: Exception) -> str:
    # An answer with an error status is not an outage: say it was refused, and why.
    refused = isinstance(error, consul.ConsulException)
    return "consul.registration.refused" if refused else "consul.registration.unreachable"


def _go_duration(seconds: float) -> str:
    return f"{seconds:g}s"


def default_instance_id(service: str, port: int) -> str:
    """``<service>-<host>-<port>``: unique per live instance, and stable across restarts on the same
    host and port, so a restarted instance replaces its own stale entry instead of leaving a ghost."""
    return f"{service}-{socket.gethostname()}-{port}"


@dataclass(frozen=True, slots=True)
class ServiceRegistration:
    """What this instance tells Consul about itself."""

    name: str
    address: str
    port: int
    version: str
    instance_id: str = ""
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    check_interval: float = 5.0
    check_timeout: float = 2.0
    deregister_critical_after: float = 60.0
    grpc_use_tls: bool = False
    tls_server_name: str = ""
    health_service: str = ""  # grpc.health.v1 service name the check asks about; "" = whole server

    @property
    def service_id(self) -> str:
        return self.instance_id or default_instance_id(self.name, self.port)

    def check(self) -> dict[str, Any]:
        target = f"{self.address}:{self.port}"
        check: dict[str, Any] = consul.Check.grpc(
            f"{target}/{self.health_service}" if self.health_service else target,
            _go_duration(self.check_interval),
            use_tls=self.grpc_use_tls,
            timeout=_go_duration(self.check_timeout),
            deregister=_go_duration(self.deregister_critical_after),
        )
        check["Name"] = f"gRPC health of {self.name} at {target}"
        if self.grpc_use_tls and self.tls_server_name:
            check["TLSServerName"] = self.tls_server_name
        return check

    def tag_list(self) -> list[str]:
        return list(dict.fromkeys((self.version, *self.tags)))

    def meta_dict(self) -> dict[str, str]:
        return {"version": self.version, "protocol": "grpc", **self.meta}


class ConsulRegistrar:
    """Keeps one instance registered with the Consul agent until ``deregister``."""

    def __init__(
        self,
        address: ConsulAddress,
        registration: ServiceRegistration,
        *,
        resync_interval: float = 30.0,
        request_timeout: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._address = address
        self._registration = registration
        self._resync_interval = resync_interval
        self._request_timeout = request_timeout
        self._backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self._loop: SupervisedLoop | None = None
        self._client: Any = None
        self._ever_registered = False
        self.registered = asyncio.Event()

    @property
    def registration(self) -> ServiceRegistration:
        return self._registration

    def start(self) -> None:
        """Begin registering in the background; returns at once, Consul up or not."""
        if self._loop is None:
            self._client = open_consul(self._address, request_timeout=self._request_timeout)
            self._loop = SupervisedLoop(
                "consul registration",
                self._keep_registered,
                backoff=self._backoff,
                outage=Outage(CONSUL_ERRORS, _outage_event, self._not_registered),
            ).start()

    async def _register(self) -> None:
        reg = self._registration
        await self._client.agent.service.register(
            reg.name,
            service_id=reg.service_id,
            address=reg.address,
            port=reg.port,
            tags=reg.tag_list(),
            meta=reg.meta_dict(),
            check=reg.check(),
        )

    async def _still_registered(self) -> bool:
        return await self._client.agent.service_definition(self._registration.service_id) is not None

    async def _keep_registered(self) -> None:
        """Register, then check every ``resync_interval`` that the agent still has us (supervised)."""
        assert self._loop is not None
        reg = self._registration
        while True:
            if not self.registered.is_set() or not await self._still_registered():
                await self._register()
                log.info(
                    "consul.registration.restored" if self._ever_registered else "consul.registration.registered",
                    service=reg.name,
                    service_id=reg.service_id,
                    address=f"{reg.address}:{reg.port}",
                    tags=reg.tag_list(),
                    consul=str(self._address),
                )
                self._ever_registered = True
                self.registered.set()
                self._loop.mark_healthy()
            await asyncio.sleep(self._resync_interval)

    def _not_registered(self, error: Exception) -> dict[str, Any]:
        self.registered.clear()
        reg = self._registration
        return {
            "service": reg.name,
            "service_id": reg.service_id,
            "consul": str(self._address),
            "serving": "yes, without registration",
        }

    async def deregister(self) -> None:
        """Stop retrying and remove this instance from Consul (best effort, bounded by request_timeout)."""
        if self._loop is None:
            return
        await self._loop.stop()
        self._loop = None
        reg = self._registration
        try:
            removed = await self._client.agent.service.deregister(reg.service_id)
            log.info("consul.registration.deregistered", service=reg.name, service_id=reg.service_id, found=removed)
        except CONSUL_ERRORS as error:
            log.warning(
                "consul.registration.deregister_failed",
                service=reg.name,
                service_id=reg.service_id,
                error=str(error) or type(error).__name__,
                note="its check will go critical and Consul reaps it after DeregisterCriticalServiceAfter",
            )
        finally:
            self.registered.clear()
            await self._client.close()
            self._client = None
