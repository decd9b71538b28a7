"""Which instances the mesh has and how each is doing, from discovery (static or Consul).

Static discovery gives each service's targets from the console's settings (the same
``{"rag": ["127.0.0.1:50053"]}`` shape as ``AGENTMESH_STATIC_TARGETS_FILE``). Consul gives every
registered instance with its version (tag/meta) and its checks, critical ones included: the
topology shows what callers no longer reach. Either way the console also asks each instance's
``grpc.health.v1`` itself, which is how a draining instance (NOT_SERVING) is told from a dead one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.discovery.consul import endpoint_from_health_entry
from runtime.discovery.consul_client import ConsulAddress, open_consul
from runtime.discovery.endpoints import Endpoint
from runtime.discovery.static import StaticResolver

# What an instance looks like on the page, best first.
# "ejected": discovery and its own health check may say fine, but a caller's Envoy keeps traffic off it.
HEALTH_ORDER = ("passing", "warning", "ejected", "draining", "critical")


@dataclass(frozen=True)
class Instance:
    service: str
    instance_id: str
    address: str  # host:port of its gRPC server
    version: str
    health: str  # one of HEALTH_ORDER
    detail: str  # why, in words (the check's output, the probe's error)

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "instance_id": self.instance_id,
            "address": self.address,
            "version": self.version,
            "health": self.health,
            "detail": self.detail,
        }


async def probe(address: str, *, timeout_s: float = 1.0) -> tuple[str, str]:
    """(health, detail) from the instance's own grpc.health.v1 Check."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            return "critical", f"health check failed: {error.code().name} {error.details() or ''}".strip()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status == health_pb2.HealthCheckResponse.SERVING:
        return "passing", "SERVING"
    return "draining", status


def _worst(a: str, b: str) -> str:
    return max(a, b, key=HEALTH_ORDER.index)


class StaticInventory:
    def __init__(self, targets: Mapping[str, Sequence[str]], versions: Mapping[str, str]) -> None:
        self._resolver = StaticResolver(targets)
        self._services = list(targets)
        self._versions = dict(versions)

    async def instances(self) -> list[Instance]:
        endpoints = [(s, e) for s in self._services for e in await self._resolver.resolve(s)]
        probes = await asyncio.gather(*(probe(e.target) for _, e in endpoints))
        return [
            Instance(s, e.instance_id, e.target, self._versions.get(e.target, "v1"), health, detail)
            for (s, e), (health, detail) in zip(endpoints, probes, strict=True)
        ]

    async def aclose(self) -> None:
        await self._resolver.aclose()


class ConsulInventory:
    """Every registered instance of ``services`` (passing or not) from Consul's health API."""

    def __init__(self, address: ConsulAddress, services: Sequence[str]) -> None:
        self._address = address
        self._services = list(services)
        self._client: Any = None

    async def _entries(self, service: str) -> list[tuple[Endpoint, str, str]]:
        if self._client is None:
            self._client = open_consul(self._address, request_timeout=3)
        _, entries = await self._client.health.service(service)
        found = []
        for entry in entries or ():
            checks = entry.get("Checks") or []
            status = "passing"
            for check in checks:
                status = _worst(status, {"passing": "passing", "warning": "warning"}.get(check["Status"], "critical"))
            detail = "; ".join(f"{c.get('Name', c.get('CheckID'))}: {c['Status']}" for c in checks)
            found.append((endpoint_from_health_entry(entry), status, detail))
        return found

    async def instances(self) -> list[Instance]:
        try:
            per_service = await asyncio.gather(*(self._entries(s) for s in self._services))
        except Exception as error:  # Consul down: say so on the page rather than show an empty mesh
            raise InventoryUnavailable(f"Consul at {self._address} did not answer: {error}") from error
        rows = [(s, e, status, detail) for s, entries in zip(self._services, per_service, strict=True)
                for e, status, detail in entries]  # fmt: skip
        probes = await asyncio.gather(*(probe(e.target) for _, e, _, _ in rows))
        instances = []
        for (service, endpoint, status, detail), (probed, probe_detail) in zip(rows, probes, strict=True):
            version = endpoint.meta.get("version") or next(iter(sorted(endpoint.tags)), "")
            instances.append(
                Instance(
                    service, endpoint.instance_id, endpoint.target, version,
                    _worst(status, probed), f"{detail}; {probe_detail}" if detail else probe_detail,
                )
            )  # fmt: skip
        return instances

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class InventoryUnavailable(Exception):
    """Discovery could not be asked (Consul down)."""


Inventory = StaticInventory | ConsulInventory
