"""Static discovery: the embedded default reads service -> host:port lists from config or a JSON file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime.discovery.endpoints import Endpoint, Endpoints
from runtime.discovery.static import StaticResolver, UnknownServiceError


async def test_static_targets_resolve_to_endpoints_in_the_given_order() -> None:
    resolver = StaticResolver({"rag": ["127.0.0.1:50053", "[::1]:50054"]})
    endpoints = await resolver.resolve("rag")
    assert [e.target for e in endpoints] == ["127.0.0.1:50053", "[::1]:50054"]
    assert endpoints[1] == Endpoint(address="::1", port=50054, instance_id="[::1]:50054")


async def test_a_file_backend_reads_the_same_table(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"agent": ["127.0.0.1:50052"]}))
    resolver = StaticResolver.from_file(path)
    assert [e.target for e in await resolver.resolve("agent")] == ["127.0.0.1:50052"]


async def test_watch_yields_the_fixed_set_once_and_ends_on_close() -> None:
    resolver = StaticResolver({"rag": ["127.0.0.1:50053"]})
    seen = [endpoints async for endpoints in _until_closed(resolver)]
    assert [[e.target for e in s] for s in seen] == [["127.0.0.1:50053"]]


async def _until_closed(resolver: StaticResolver) -> AsyncIterator[Endpoints]:
    async for endpoints in resolver.watch("rag"):
        yield endpoints
        await resolver.aclose()


async def test_an_unknown_service_names_the_ones_that_are_configured() -> None:
    with pytest.raises(UnknownServiceError, match=r"'search'.*configured: agent, rag"):
        await StaticResolver({"rag": [], "agent": []}).resolve("search")


@pytest.mark.parametrize("bad", ["rag", "rag:", ":80", "rag:99999", "rag:http"])
def test_malformed_targets_are_refused_with_the_expected_form(bad: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        Endpoint.parse(bad)


def test_a_malformed_file_is_refused_with_the_expected_shape(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"rag": "127.0.0.1:1"}))
    with pytest.raises(ValueError, match="lists of host:port"):
        StaticResolver.from_file(path)
