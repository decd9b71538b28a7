"""Auth settings: exactly one key source; the mesh scope table covers every RPC of the contracts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from agentmesh.agent.v1 import agent_service_pb2
from agentmesh.rag.v1 import rag_service_pb2
from interceptors.auth import resolve_access
from runtime.security import MESH_REQUIRED_SCOPES, AuthSettings, auth_interceptor


def test_auth_needs_exactly_one_key_source(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="exactly one key source"):
        AuthSettings()
    with pytest.raises(ValidationError, match="exactly one key source"):
        AuthSettings(jwks_file=tmp_path / "jwks.json", dev_hs256_secret=SecretStr("s" * 40))


def test_auth_settings_parse_from_json_like_the_environment_gives_them() -> None:
    settings = AuthSettings.model_validate_json('{"dev_hs256_secret": "' + "s" * 40 + '", "audience": "mesh"}')
    assert settings.audience == "mesh"
    assert "s" * 40 not in repr(settings)  # the secret never reaches logs
    assert auth_interceptor(settings, service="rag") is not None


def test_no_auth_settings_means_no_interceptor() -> None:
    assert auth_interceptor(None, service="rag") is None


@pytest.mark.parametrize("module", [agent_service_pb2, rag_service_pb2])
def test_every_rpc_of_the_contracts_has_a_scope_rule(module: object) -> None:
    for service in module.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            assert path in MESH_REQUIRED_SCOPES, f"{path} has no scope rule, so auth would deny it to everyone"
            assert resolve_access(AuthSettings(dev_hs256_secret=SecretStr("s" * 40)).policy(), path).scopes
