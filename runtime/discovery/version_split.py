"""Split a backend's calls between its versions by weight (the live `route_weights` setting).

Instances carry their version as a Consul tag (`runtime/discovery/registration.py`). With
weights set, each version gets its own balanced channel over the instances tagged with it, and
every call picks a version by weight: `{"v1": 90, "v2": 10}` sends a tenth of the calls to v2.
Empty weights (the default) mean no split: every passing instance of the backend is used.
A version picked by weight but with no passing instance fails its calls with UNAVAILABLE, as
a weighted cluster with no hosts does in Envoy; weights are an operator's promise that the
version is deployed.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import AsyncIterator, Mapping

import grpc

from runtime.discovery.endpoints import Endpoints, Resolver


class TaggedResolver:
    """The instances of the inner resolver that carry ``tag`` (the inner one is shared, not owned)."""

    def __init__(self, inner: Resolver, tag: str) -> None:
        self._inner = inner
        self._tag = tag

    def _only_tagged(self, endpoints: Endpoints) -> Endpoints:
        return tuple(e for e in endpoints if self._tag in e.tags)

    async def resolve(self, service: str) -> Endpoints:
        return self._only_tagged(await self._inner.resolve(service))

    async def watch(self, service: str) -> AsyncIterator[Endpoints]:
        last: Endpoints | None = None
        inner = self._inner.watch(service)
        try:
            async for endpoints in inner:
                tagged = self._only_tagged(endpoints)
                if tagged != last:
                    last = tagged
                    yield tagged
        finally:
            await inner.aclose()  # type: ignore[attr-defined]  # the inner watch stops its queries now

    async def aclose(self) -> None:
        return None


class WeightedPick:
    """A per-call weighted choice between channels; built once per weights change."""

    def __init__(self, weighted: Mapping[str, tuple[int, grpc.aio.Channel]], *, rng: random.Random) -> None:
        live = [(version, weight, channel) for version, (weight, channel) in sorted(weighted.items()) if weight > 0]
        self._channels = [channel for _, _, channel in live]
        self._cumulative = list(itertools.accumulate(weight for _, weight, _ in live))
        self._rng = rng

    def __call__(self) -> grpc.aio.Channel:
        point = self._rng.random() * self._cumulative[-1]
        return self._channels[bisect.bisect_right(self._cumulative, point)]
