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
        self._address = address
        self._tag = tag
        self._wait = wait
        self._min_query_interval = min_query_interval
        self._backoff_template = backoff
        self._client: Any = None

    def _consul(self) -> Any:
        if self._client is None:
            self._client = open_consul(self._address)
        return self._client

    async def _query(self, service: str, index: int) -> tuple[int, Endpoints]:
        raw_index, entries = await self._consul().health.service(
            service, index=index or None, wait=self._wait, passing=True, tag=self._tag
        )
        return int(raw_index), _sorted([endpoint_from_health_entry(e) for e in entries or ()])

    async def resolve(self, service: str) -> Endpoints:
        _, endpoints = await self._query(service, 0)
        return endpoints

    async def watch(self, service: str) -> AsyncIterator[Endpoints]:
        backoff = self._backoff_template or Backoff(initial=0.25, maximum=10.0)
        index = 0
        last: Endpoints | None = None
        unreachable = False
        while True:
            started = time.monotonic()
            try:
                new_index, endpoints = await self._query(service, index)
            except CONSUL_ERRORS as error:
                delay = backoff.next_delay()
                log.warning(
                    "consul.discovery.unreachable",
                    service=service,
                    consul=str(self._address),
                    error=str(error) or type(error).__name__,
                    keeping=[e.target for e in last or ()],
                    retry_in=round(delay, 2),
                )
                unreachable = True
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if unreachable:
                log.info("consul.discovery.reconnected", service=service, consul=str(self._address))
                unreachable = False
            # Consul's blocking-query rules: an index that goes backwards means the state was
            # reset (restore, new agent), so start over; an index of 0 must never be sent back.
            index = 0 if new_index < index else max(new_index, 1)
            if endpoints != last:
                log.debug(  # the channel that applies the change logs it at info
                    "consul.discovery.changed",
                    service=service,
                    old=[e.target for e in last or ()],
                    new=[e.target for e in endpoints],
                )
                last = endpoints
                yield endpoints
            # Consul asks watchers to rate-limit so a flapping result cannot become a hot loop.
            pause = self._min_query_interval - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(pause)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
