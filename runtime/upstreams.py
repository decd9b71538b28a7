"""Channels to named backends ("agent", "rag"), one long-lived grpc.aio channel per backend.

`StaticUpstreams` is the embedded default: endpoints from configuration, balanced by grpc's
own `round_robin` policy over an `ipv4:`/`ipv6:` address list, so no resolver process is
needed. Discovery backends (Consul) implement the same `Upstreams` protocol.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Protocol

import grpc

# Keepalive keeps idle pooled connections healthy through NATs and proxies; reconnect
# backoff bounded so a restarted backend is found again quickly.
CHANNEL_OPTIONS: tuple[tuple[str, object], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 0),
)


class Upstreams(Protocol):
    def channel(self, backend: str) -> grpc.aio.Channel: ...

    async def close(self) -> None: ...


class UnknownBackendError(KeyError):
    pass


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def static_target(endpoints: Sequence[str]) -> str:
    """The grpc target for a fixed list of host:port endpoints."""
    if not endpoints:
        raise ValueError("a backend needs at least one endpoint")
    if len(endpoints) == 1:
        return endpoints[0]
    hosts = [e.rsplit(":", 1)[0] for e in endpoints]
    if not all(_is_ip(h) for h in hosts):
        raise ValueError(f"several endpoints must be IP literals for static balancing: {list(endpoints)}")
    scheme = "ipv6" if any(":" in h.strip("[]") for h in hosts) else "ipv4"
    return f"{scheme}:{','.join(endpoints)}"


class StaticUpstreams:
    def __init__(
        self,
        endpoints: Mapping[str, Sequence[str]],
        *,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._endpoints = {name: list(eps) for name, eps in endpoints.items()}
        self._interceptors = list(interceptors)
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, backend: str) -> grpc.aio.Channel:
        channel = self._channels.get(backend)
        if channel is not None:
            return channel
        if backend not in self._endpoints:
            raise UnknownBackendError(backend)
        target = static_target(self._endpoints[backend])
        options = [
            *CHANNEL_OPTIONS,
            ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
        ]
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(target, options=options, interceptors=self._interceptors)
        else:
            channel = grpc.aio.secure_channel(
                target, self._credentials, options=options, interceptors=self._interceptors
            )
        self._channels[backend] = channel
        return channel

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)
