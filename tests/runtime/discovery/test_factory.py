"""One switch picks the discovery backend; static is the default; both give the same upstreams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.discovery.consul import ConsulResolver
from runtime.discovery.factory import build_registrar, build_resolver
from runtime.discovery.settings import DiscoverySettings
from runtime.discovery.static import StaticResolver


async def test_static_discovery_is_the_default_and_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTMESH_DISCOVERY", raising=False)
    settings = DiscoverySettings(_env_file=None)
    resolver = build_resolver(settings, static={"rag": ["127.0.0.1:50053"]})
    assert isinstance(resolver, StaticResolver)
    assert [e.target for e in await resolver.resolve("rag")] == ["127.0.0.1:50053"]
    assert build_registrar(settings, service="rag", port=50053) is None


async def test_a_static_targets_file_replaces_the_services_own_endpoints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"rag": ["127.0.0.1:50099"]}))
    monkeypatch.setenv("AGENTMESH_STATIC_TARGETS_FILE", str(path))
    resolver = build_resolver(DiscoverySettings(_env_file=None), static={"rag": ["127.0.0.1:50053"]})
    assert [e.target for e in await resolver.resolve("rag")] == ["127.0.0.1:50099"]


async def test_agentmesh_discovery_consul_switches_to_consul_at_consuls_usual_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTMESH_DISCOVERY", "consul")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.0.1:18500")
    monkeypatch.setenv("AGENTMESH_SERVICE_VERSION", "v2")
    settings = DiscoverySettings(_env_file=None)
    assert isinstance(build_resolver(settings, static={}), ConsulResolver)
    registrar = build_registrar(settings, service="rag", port=50053)
    assert registrar is not None
    assert registrar.registration.tag_list() == ["v2"]
    assert settings.consul_http_addr == "127.0.0.1:18500"
