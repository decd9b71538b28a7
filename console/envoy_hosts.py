"""Which instances Envoy keeps traffic off: each sidecar's view of its upstream hosts.

Under ``make run MESH=envoy`` every caller's sidecar runs outlier detection and active gRPC
health checks on the instances it calls. An ejected instance can look perfectly healthy to
discovery and to its own ``grpc.health.v1`` (it answers SERVING, it just fails calls), so only
the sidecars know. Each one's admin ``/clusters?format=json`` (envoy.admin.v3.Clusters) lists
every upstream host with its ``health_status``: ``failed_outlier_check`` (ejected by outlier
detection), ``failed_active_health_check`` (its health check failed), ``eds_health_status``
(what the control plane said; UNHEALTHY/DRAINING/TIMEOUT keep traffic off too). Booleans that are
false are left out of the JSON, as proto3 JSON does.

Envoy names a host by the address it dials (a sidecar's inbound port in the local layout), so
``upstreams`` maps that address to the instance's own gRPC address, the one discovery knows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

# eds_health_status values that take a host out of load balancing (HEALTHY, UNKNOWN, DEGRADED do not).
EDS_OUT = frozenset({"UNHEALTHY", "DRAINING", "TIMEOUT"})


@dataclass(frozen=True)
class Ejection:
    """One sidecar keeping traffic off one instance, and why."""

    reporter: str  # whose sidecar says so ("gateway-v1", "edge")
    cluster: str
    reason: str  # "outlier detection", "active health check", "EDS: DRAINING"

    def to_json(self) -> dict[str, str]:
        return {"reporter": self.reporter, "cluster": self.cluster, "reason": self.reason}


def host_reasons(health_status: Mapping[str, Any]) -> list[str]:
    """Why Envoy keeps traffic off a host, from its HostHealthStatus (empty: it takes traffic)."""
    reasons = []
    if health_status.get("failed_outlier_check"):
        reasons.append("outlier detection")
    if health_status.get("failed_active_health_check"):
        reasons.append("active health check")
    eds = str(health_status.get("eds_health_status", ""))
    if eds in EDS_OUT:
        reasons.append(f"EDS: {eds}")
    return reasons


def ejections_from_clusters(
    reporter: str, clusters: Mapping[str, Any], upstreams: Mapping[str, str]
) -> dict[str, list[Ejection]]:
    """Instance address -> ejections, from one admin ``/clusters?format=json`` body."""
    found: dict[str, list[Ejection]] = {}
    for cluster in clusters.get("cluster_statuses", []):
        for host in cluster.get("host_statuses", []):
            socket_address = host.get("address", {}).get("socket_address", {})
            dialled = f"{socket_address.get('address', '')}:{socket_address.get('port_value', 0)}"
            for reason in host_reasons(host.get("health_status", {})):
                instance = upstreams.get(dialled, dialled)
                found.setdefault(instance, []).append(Ejection(reporter, str(cluster.get("name", "")), reason))
    return found


class EnvoyUnavailable(Exception):
    """A sidecar's admin endpoint did not answer."""


class EnvoyHosts:
    """Asks every known sidecar's admin API which upstream hosts it keeps traffic off."""

    def __init__(self, admins: Mapping[str, str], upstreams: Mapping[str, str], *, timeout_s: float = 2.0) -> None:
        self.admins = {name: url.rstrip("/") for name, url in admins.items()}
        self._upstreams = dict(upstreams)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        return bool(self.admins)

    async def _clusters(self, name: str, url: str) -> dict[str, list[Ejection]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{url}/clusters", params={"format": "json"}) as response:
                response.raise_for_status()
                body: dict[str, Any] = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            reason = str(error) or type(error).__name__
            raise EnvoyUnavailable(f"{name}'s Envoy admin at {url} did not answer: {reason}") from error
        return ejections_from_clusters(name, body, self._upstreams)

    async def read(self) -> tuple[dict[str, list[Ejection]], list[str]]:
        """(instance address -> ejections, problems): a sidecar that does not answer is a problem, not a gap."""
        results = await asyncio.gather(
            *(self._clusters(name, url) for name, url in self.admins.items()), return_exceptions=True
        )
        merged: dict[str, list[Ejection]] = {}
        problems = []
        for result in results:
            if isinstance(result, EnvoyUnavailable):
                problems.append(str(result))
            elif isinstance(result, BaseException):
                raise result
            else:
                for address, ejections in result.items():
                    merged.setdefault(address, []).extend(ejections)
        return merged, problems

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
