"""Static discovery, the embedded default: service name -> fixed endpoints, from config or a JSON file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from runtime.discovery.endpoints import Endpoint, Endpoints


class UnknownServiceError(LookupError):
    """The static table has no entry for the service asked for."""


class StaticResolver:
    """Endpoints fixed at construction; ``watch`` yields them once and then waits until closed."""

    def __init__(self, targets: Mapping[str, Sequence[str]]) -> None:
        self._table: dict[str, Endpoints] = {
            service: tuple(Endpoint.parse(t) for t in service_targets) for service, service_targets in targets.items()
        }
        self._closed = asyncio.Event()

    @classmethod
    def from_file(cls, path: Path) -> StaticResolver:
        """A JSON object of service name -> list of ``host:port``, e.g. ``{"rag": ["127.0.0.1:50053"]}``."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(
            isinstance(v, list) and all(isinstance(t, str) for t in v) for v in data.values()
        ):
            raise ValueError(f"{path}: expected a JSON object mapping service names to lists of host:port")
        return cls(data)

    async def resolve(self, service: str) -> Endpoints:
        try:
            return self._table[service]
        except KeyError:
            known = ", ".join(sorted(self._table)) or "none"
            raise UnknownServiceError(f"no static endpoints for service {service!r} (configured: {known})") from None

    async def watch(self, service: str) -> AsyncIterator[Endpoints]:
        yield await self.resolve(service)
        await self._closed.wait()

    async def aclose(self) -> None:
        self._closed.set()
