"""Route weights: a weighted pick between version channels, over instances filtered by version tag."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, cast

import grpc

from runtime.discovery.endpoints import Endpoint
from runtime.discovery.static import StaticResolver
from runtime.discovery.version_split import TaggedResolver, WeightedPick
from runtime.live_config.settings import DynamicSettings


def test_calls_are_picked_in_proportion_to_the_weights_and_zero_weight_gets_none() -> None:
    v1, v2, v3 = (cast(grpc.aio.Channel, object()) for _ in range(3))
    pick = WeightedPick({"v1": (90, v1), "v2": (10, v2), "v3": (0, v3)}, rng=random.Random(7))
    counts = Counter(pick() for _ in range(10_000))
    assert counts[v3] == 0
    assert abs(counts[v2] - 1_000) < 150  # binomial sd is 30


async def test_a_tagged_view_keeps_only_the_instances_of_its_version() -> None:
    resolver: Any = StaticResolver({"rag": ["127.0.0.1:1"]})

    async def resolve(service: str) -> tuple[Endpoint, ...]:
        return (
            Endpoint("127.0.0.1", 1, "a", tags=frozenset({"v1"})),
            Endpoint("127.0.0.1", 2, "b", tags=frozenset({"v2", "canary"})),
        )

    resolver.resolve = resolve
    assert [e.instance_id for e in await TaggedResolver(resolver, "v2").resolve("rag")] == ["b"]
    assert [e.instance_id for e in await TaggedResolver(resolver, "v3").resolve("rag")] == []


def test_no_weights_means_no_split_and_weights_must_route_somewhere() -> None:
    assert DynamicSettings(_env_file=None).route_weights == {}
    assert DynamicSettings(_env_file=None, route_weights={"v1": 0, "v2": 1}).route_weights == {"v1": 0, "v2": 1}
    for bad in ({"v1": 0}, {"v1": -1, "v2": 5}):
        try:
            DynamicSettings(_env_file=None, route_weights=bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")
