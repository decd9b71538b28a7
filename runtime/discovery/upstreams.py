"""Upstreams found by discovery: one `BalancedChannel` per backend name, following a `Resolver`.

Implements the `runtime.upstreams.Upstreams` protocol for the gateway and the agent, with static
endpoints or Consul behind it (`runtime.discovery.factory.build_upstreams` picks the resolver).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

import grpc

from runtime.discovery.balanced_channel import BalancedChannel
from runtime.discovery.endpoints import Resolver
from runtime.upstreams import CHANNEL_OPTIONS, UnknownBackendError


class DiscoveryUpstreams:
    def __init__(
        self,
        resolver: Resolver,
        backends: Iterable[str],
        *,
        retry_methods: Iterable[str] = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        credentials: grpc.ChannelCredentials | None = None,
        health_checks: bool = True,
    ) -> None:
        self._resolver = resolver
        retry = list(retry_methods)
        self._channels = {
            name: BalancedChannel(
                name,
                resolver,
                credentials=credentials,
                options=CHANNEL_OPTIONS,
                interceptors=interceptors,
                retry_methods=retry,
                health_service="" if health_checks else None,
            )
            for name in backends
        }

    async def start(self, *, first_resolve_timeout: float = 2.0) -> None:
        """Follow every backend; wait (bounded, concurrently) for discovery's first answer."""
        await asyncio.gather(
            *(channel.start(first_resolve_timeout=first_resolve_timeout) for channel in self._channels.values())
        )

    def channel(self, backend: str) -> grpc.aio.Channel:
        try:
            return self._channels[backend]
        except KeyError:
            raise UnknownBackendError(backend) from None

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        await self._resolver.aclose()
