"""Channels to named backends ("agent", "rag"), one long-lived grpc.aio channel per backend.

`Upstreams` is what the gateway and the agent call through; `DiscoveryUpstreams` implements it
with one `BalancedChannel` per backend name following a `Resolver`: static endpoints from
configuration (the embedded default) or Consul (`runtime.discovery.factory.build_upstreams`
picks the resolver).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import grpc

from runtime.channel_options import CHANNEL_OPTIONS
from runtime.discovery.balanced_channel import BalancedChannel
from runtime.discovery.endpoints import Resolver
from runtime.discovery.version_split import TaggedResolver, WeightedPick


class Upstreams(Protocol):
    def channel(self, backend: str) -> grpc.aio.Channel: ...

    async def close(self) -> None: ...


class UnknownBackendError(KeyError):
    pass


class DiscoveryUpstreams:
    def __init__(
        self,
        resolver: Resolver,
        backends: Iterable[str],
        *,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        credentials: grpc.ChannelCredentials | None = None,
        health_checks: bool = True,
    ) -> None:
        self._resolver = resolver

        def balanced(name: str, resolver: Resolver) -> BalancedChannel:
            return BalancedChannel(
                name,
                resolver,
                credentials=credentials,
                options=CHANNEL_OPTIONS,
                interceptors=interceptors,
                health_service="" if health_checks else None,
            )

        self._balanced = balanced
        self._channels = {name: balanced(name, resolver) for name in backends}
        # Version split (route weights): one channel per (backend, version), a pick per backend.
        self._by_version: dict[tuple[str, str], BalancedChannel] = {}
        self._picks: dict[str, WeightedPick] = {}
        self._rng = random.Random()

    async def start(self, *, first_resolve_timeout: float = 2.0) -> None:
        """Follow every backend; wait (bounded, concurrently) for discovery's first answer."""
        await asyncio.gather(
            *(channel.start(first_resolve_timeout=first_resolve_timeout) for channel in self._channels.values())
        )

    def channel(self, backend: str) -> grpc.aio.Channel:
        """The channel for one call to ``backend``: picked by version weight when a split is set."""
        pick = self._picks.get(backend)
        if pick is not None:
            return pick()
        try:
            return self._channels[backend]
        except KeyError:
            raise UnknownBackendError(backend) from None

    async def set_route_weights(self, weights: Mapping[str, int], *, first_resolve_timeout: float = 2.0) -> None:
        """Split every backend's calls by version weight from now on; empty weights stop splitting.

        Channels for versions named the first time are started (and resolved) before the new
        split takes effect, so no call is picked onto a channel that has not looked up its
        instances yet. Channels of versions dropped from the weights stay open (calls in flight
        finish) until the upstreams close.
        """
        if not weights:
            self._picks = {}
            return
        starting = []
        for backend in self._channels:
            for version in weights:
                if (backend, version) not in self._by_version:
                    channel = self._balanced(backend, TaggedResolver(self._resolver, version))
                    self._by_version[(backend, version)] = channel
                    starting.append(channel.start(first_resolve_timeout=first_resolve_timeout))
        await asyncio.gather(*starting)
        self._picks = {
            backend: WeightedPick(
                {version: (weight, self._by_version[(backend, version)]) for version, weight in weights.items()},
                rng=self._rng,
            )
            for backend in self._channels
        }

    async def close(self) -> None:
        for channel in [*self._channels.values(), *self._by_version.values()]:
            await channel.close(None)
        await self._resolver.aclose()
