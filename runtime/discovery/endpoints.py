"""What discovery hands to callers: endpoints of a service and the Resolver protocol."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service: where to dial it, plus the tags and meta it registered."""

    address: str
    port: int
    instance_id: str = ""
    tags: frozenset[str] = frozenset()
    meta: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), compare=False, hash=False)

    @property
    def target(self) -> str:
        """``host:port`` with IPv6 literals bracketed, as gRPC targets want them."""
        try:
            if ipaddress.ip_address(self.address).version == 6:
                return f"[{self.address}]:{self.port}"
        except ValueError:
            pass
        return f"{self.address}:{self.port}"

    @classmethod
    def parse(cls, target: str) -> Endpoint:
        """``host:port`` or ``[v6]:port``; the instance id defaults to the target itself."""
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"endpoint {target!r} must look like host:port")
        host = host.removeprefix("[").removesuffix("]")
        return cls(address=host, port=int(port), instance_id=target)


Endpoints = tuple[Endpoint, ...]


class Resolver(Protocol):
    """Maps a service name to the endpoints that should receive its calls right now."""

    async def resolve(self, service: str) -> Endpoints:
        """The current set (may wait for the first answer from the backend)."""
        ...

    def watch(self, service: str) -> AsyncIterator[Endpoints]:
        """Yield the current set, then every changed set until the iterator is closed."""
        ...

    async def aclose(self) -> None:
        """Release connections held by the resolver."""
        ...
