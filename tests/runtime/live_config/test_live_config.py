"""Live config: KV overrides apply without a restart, are validated first, and are logged old -> new."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from runtime.backoff import Backoff
from runtime.discovery.consul_client import ConsulAddress, open_consul
from runtime.live_config.kv import LiveConfig, kv_prefix, overrides_from_kv
from runtime.live_config.settings import DynamicSettings
from tests.doubles.consul_fixtures import ConsulUnderTest
from tests.runtime.log_events import log_events
from tools.consul_double import ConsulAgentDouble

Change = tuple[DynamicSettings, DynamicSettings]


@pytest.fixture
async def client(consul: ConsulUnderTest) -> AsyncIterator[Any]:
    c = open_consul(consul.address)
    yield c
    await c.close()


@pytest.fixture
async def live(
    consul: ConsulUnderTest, client: Any
) -> AsyncIterator[tuple[LiveConfig[DynamicSettings], asyncio.Queue[Change]]]:
    """A gateway's live config with no overrides yet, and the changes it applies; the overrides a
    test writes are deleted afterwards."""
    config = LiveConfig(DynamicSettings(), service=consul.unique("gateway"), consul=consul.address)
    changes: asyncio.Queue[Change] = asyncio.Queue()
    config.subscribe(lambda old, new: changes.put_nowait((old, new)))
    await config.start()
    await asyncio.wait_for(config.synced.wait(), 10)
    yield config, changes
    await config.aclose()
    await client.kv.delete(kv_prefix(config._service), recurse=True)


def key(config: LiveConfig[Any], path: str) -> str:
    return kv_prefix(config._service) + path


async def test_a_kv_change_applies_live_and_is_logged_old_to_new(
    live: tuple[LiveConfig[DynamicSettings], asyncio.Queue[Change]], client: Any
) -> None:
    config, changes = live
    assert config.current.breaker is None  # the service's own policy
    with log_events() as logs:
        await client.kv.put(key(config, "breaker/consecutive_failures"), "3")
        old, new = await asyncio.wait_for(changes.get(), 10)
    assert old.breaker is None
    assert new.breaker is not None
    assert new.breaker.consecutive_failures == 3
    assert new.breaker.model_fields_set == {"consecutive_failures"}  # only what KV names is laid over
    assert config.current is new
    [entry] = logs.named("live_config.changed")
    assert (entry["setting"], entry["old"], entry["new"]) == ("breaker.consecutive_failures", None, 3)

    await client.kv.put(key(config, "route_weights"), '{"v1": 90, "v2": 10}')
    await client.kv.put(key(config, "feature_flags/hybrid_search"), "true")
    while config.current.feature_flags != {"hybrid_search": True}:
        await asyncio.wait_for(changes.get(), 10)
    assert config.current.route_weights == {"v1": 90, "v2": 10}


async def test_an_invalid_kv_value_is_refused_and_the_last_good_settings_stay(
    live: tuple[LiveConfig[DynamicSettings], asyncio.Queue[Change]], client: Any
) -> None:
    config, changes = live
    await client.kv.put(key(config, "rate_limit"), '{"rate_per_second": 5, "burst": 20}')
    await asyncio.wait_for(changes.get(), 10)
    with log_events() as logs:
        await client.kv.put(key(config, "rate_limit"), '{"rate_per_second": 5, "burst": 0}')  # burst >= 1
        refused = await logs.wait_for("live_config.refused")
    assert refused["problems"][0]["key"] == key(config, "rate_limit/burst")
    assert "greater than or equal to 1" in refused["problems"][0]["error"]
    assert config.current.rate_limit is not None
    assert config.current.rate_limit.burst == 20
    assert changes.empty()

    await client.kv.put(key(config, "rate_limit"), '{"rate_per_second": 5, "burst": 30}')  # fixed: applies
    _, new = await asyncio.wait_for(changes.get(), 10)
    assert new.rate_limit is not None
    assert new.rate_limit.burst == 30


async def test_deleting_an_override_falls_back_to_the_env_value(
    live: tuple[LiveConfig[DynamicSettings], asyncio.Queue[Change]], client: Any
) -> None:
    config, changes = live
    await client.kv.put(key(config, "breaker/open_seconds"), "2.5")
    _, changed = await asyncio.wait_for(changes.get(), 10)
    assert changed.breaker is not None
    assert changed.breaker.open_seconds == 2.5
    await client.kv.delete(key(config, "breaker/open_seconds"))
    _, new = await asyncio.wait_for(changes.get(), 10)
    assert new.breaker is None  # nothing set by env either: the service's configured policy again


async def test_with_consul_down_at_start_the_env_settings_serve_until_it_comes_back(
    consul: ConsulUnderTest,
) -> None:
    double = consul.require_double("cannot take a real agent down and up again from a test")
    port = double.port
    await double.stop()
    config = LiveConfig(
        DynamicSettings(),
        service="gateway",
        consul=ConsulAddress(f"127.0.0.1:{port}"),
        backoff=Backoff(initial=0.05, maximum=0.2),
    )
    with log_events() as logs:
        await config.start()
        outage = await logs.wait_for("live_config.consul_unreachable")
        assert outage["using"] == "env/.env settings"
        assert config.current == DynamicSettings()
        async with ConsulAgentDouble(port=port) as revived:
            client = open_consul(ConsulAddress(revived.http_addr))
            await client.kv.put("agentmesh/gateway/feature_flags/streaming", "true")
            await client.close()
            await logs.wait_for("live_config.changed")
            assert config.current.feature_flags == {"streaming": True}
            await config.aclose()


async def test_the_last_applied_kv_settings_are_used_when_consul_is_down_at_the_next_start(
    consul: ConsulUnderTest, client: Any, tmp_path: Path
) -> None:
    service, cache = consul.unique("gateway"), tmp_path / "live-config.json"
    await client.kv.put(kv_prefix(service) + "breaker/consecutive_failures", "2")
    first = LiveConfig(DynamicSettings(), service=service, consul=consul.address, cache_path=cache)
    await first.start()
    await asyncio.wait_for(first.synced.wait(), 10)
    await first.aclose()
    await client.kv.delete(kv_prefix(service), recurse=True)

    unreachable = ConsulAddress("127.0.0.1:1")  # nothing listens on port 1
    second = LiveConfig(DynamicSettings(), service=service, consul=unreachable, cache_path=cache)
    await second.start()
    await asyncio.wait_for(second.synced.wait(), 10)
    assert second.current.breaker is not None
    assert second.current.breaker.consecutive_failures == 2
    await second.aclose()


def test_kv_paths_nest_and_values_parse_as_json_or_text() -> None:
    entries: list[Mapping[str, Any]] = [
        {"Key": "agentmesh/rag/breaker/consecutive_failures", "Value": b"7"},
        {"Key": "agentmesh/rag/feature_flags/", "Value": None},
        {"Key": "agentmesh/rag/route_weights", "Value": b'{"v2": 1}'},
        {"Key": "agentmesh/rag/motd", "Value": b"hello"},
    ]
    assert overrides_from_kv("agentmesh/rag/", entries) == {
        "breaker": {"consecutive_failures": 7},
        "route_weights": {"v2": 1},
        "motd": "hello",
    }


async def test_a_typo_in_a_key_is_refused_rather_than_silently_ignored() -> None:
    config = LiveConfig(DynamicSettings(), service="rag", consul=None)
    with log_events() as logs:
        assert not await config.apply({"breaker": {"failure_treshold": 1}}, source="test")
    assert logs.named("live_config.refused")[0]["problems"][0]["key"] == "agentmesh/rag/breaker/failure_treshold"


async def test_an_unknown_top_level_key_is_refused_too() -> None:
    config = LiveConfig(DynamicSettings(), service="rag", consul=None)
    with log_events() as logs:
        assert not await config.apply({"feature_flag": {"x": True}}, source="test")
    [problem] = logs.named("live_config.refused")[0]["problems"]
    assert problem["key"] == "agentmesh/rag/feature_flag"
    assert "not a setting" in problem["error"]
