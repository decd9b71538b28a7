"""Consul discovery: passing instances from the health API, followed with blocking queries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any

import structlog

from runtime.backoff import Backoff
from runtime.discovery.consul_client import CONSUL_ERRORS, ConsulAddress, open_consul
from runtime.discovery.endpoints import Endpoint, Endpoints
from runtime.supervisor import Outage, SupervisedLoop

log = structlog.get_logger(__name__)


def endpoint_from_health_entry(entry: Mapping[str, Any]) -> Endpoint:
    """One ``/v1/health/service`` entry; an empty service address means "the node's address"."""
    service, node = entry["Service"], entry["Node"]
    return Endpoint(
        address=service.get("Address") or node["Address"],
        port=int(service["Port"]),
        instance_id=service["ID"],
        tags=frozenset(service.get("Tags") or ()),
        meta=MappingProxyType(dict(service.get("Meta") or {})),
    )


def _sorted(endpoints: list[Endpoint]) -> Endpoints:
    return tuple(sorted(endpoints, key=lambda e: (e.address, e.port, e.instance_id)))


class ConsulResolver:
    """Resolves names to instances whose every check is passing, optionally filtered by one tag.

    ``watch`` keeps one blocking query open per service (``index``/``wait``) and yields only
    when the passing set changes. When Consul is unreachable it keeps the last set it saw:
    an agent outage says nothing about the health of the instances behind it.
    """

    def __init__(
        self,
        address: ConsulAddress,
        *,
        tag: str | None = None,
        wait: str = "55s",
        min_query_interval: float = 0.05,
        backoff: Backoff | None = None,
    ) -> None:
        self.address = address
        self._tag = tag
        self._wait = wait
        self.min_query_interval = min_query_interval
        self._backoff_template = backoff
        self._client: Any = None

    def _consul(self) -> Any:
        if self._client is None:
            self._client = open_consul(self.address)
        return self._client

    async def query(self, service: str, index: int) -> tuple[int, Endpoints]:
        """One blocking query: the passing set once Consul's index passes ``index`` (0: at once)."""
        raw_index, entries = await self._consul().health.service(
            service, index=index or None, wait=self._wait, passing=True, tag=self._tag
        )
        return int(raw_index), _sorted([endpoint_from_health_entry(e) for e in entries or ()])

    async def resolve(self, service: str) -> Endpoints:
        _, endpoints = await self.query(service, 0)
        return endpoints

    async def watch(self, service: str) -> AsyncIterator[Endpoints]:
        """The passing set now, then each change of it; the queries run as a supervised loop,
        so an outage is logged and retried there while this keeps the last set."""
        follow = _Watch(self, service)
        loop = SupervisedLoop(
            f"consul-watch:{service}",
            follow.step,
            backoff=self._backoff_template or Backoff(initial=0.25, maximum=10.0),
            outage=Outage(CONSUL_ERRORS, "consul.discovery.unreachable", follow.unreachable),
        )
        follow.loop = loop.start()
        try:
            while True:
                yield await follow.next_change()
        finally:
            await loop.stop()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class _Watch:
    """One service's blocking queries and the latest passing set they found, for ``watch``."""

    def __init__(self, resolver: ConsulResolver, service: str) -> None:
        self._resolver = resolver
        self._service = service
        self._index = 0
        self._latest: Endpoints | None = None  # the newest passing set found
        self._given: Endpoints | None = None  # the last one the consumer took
        self._changed = asyncio.Event()
        self.loop: SupervisedLoop | None = None

    async def next_change(self) -> Endpoints:
        """The newest set once it differs from the last one taken (a change that came and went
        while the consumer was busy is no change)."""
        while self._latest is None or self._latest == self._given:
            self._changed.clear()
            await self._changed.wait()
        self._given = self._latest
        return self._latest

    async def step(self) -> None:
        """Blocking queries until one fails (the supervisor retries it with backoff)."""
        while True:
            started = time.monotonic()
            new_index, endpoints = await self._resolver.query(self._service, self._index)
            assert self.loop is not None
            self.loop.mark_healthy()
            # Consul's blocking-query rules: an index that goes backwards means the state was
            # reset (restore, new agent), so start over; an index of 0 must never be sent back.
            self._index = 0 if new_index < self._index else max(new_index, 1)
            if endpoints != self._latest:
                log.debug(  # the channel that applies the change logs it at info
                    "consul.discovery.changed",
                    service=self._service,
                    old=[e.target for e in self._latest or ()],
                    new=[e.target for e in endpoints],
                )
                self._latest = endpoints
                self._changed.set()
            # Consul asks watchers to rate-limit so a flapping result cannot become a hot loop.
            pause = self._resolver.min_query_interval - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(pause)

    def unreachable(self, _error: Exception) -> dict[str, Any]:
        return {
            "service": self._service,
            "consul": str(self._resolver.address),
            "keeping": [e.target for e in self._latest or ()],
        }
