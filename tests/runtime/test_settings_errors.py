"""Settings errors in words: the variable, what it accepts, and never the value given (it may be a secret)."""

from __future__ import annotations

import pytest

from runtime.settings_errors import InvalidSetting, load_settings
from services.agent.config import AgentSettings
from services.gateway.config import GatewaySettings


def test_a_bad_value_is_named_by_its_variable_and_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_GATEWAY_PORT", "s3cret-token")
    with pytest.raises(InvalidSetting) as refused:
        load_settings(GatewaySettings)
    assert str(refused.value).startswith("AGENTMESH_GATEWAY_PORT: ")
    assert "expected an integer from 0 to 65535" in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_several_bad_variables_are_all_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_AGENT_WORKERS", "none")
    monkeypatch.setenv("AGENTMESH_AGENT_EVENT_BUS", "kafka")
    with pytest.raises(InvalidSetting) as refused:
        load_settings(AgentSettings)
    line = str(refused.value)
    assert "\n" not in line
    assert "AGENTMESH_AGENT_WORKERS: " in line
    assert "AGENTMESH_AGENT_EVENT_BUS: " in line and "expected one of in_process, redis" in line


def test_a_nested_object_says_which_key_is_wrong_and_which_keys_it_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_GATEWAY_AUTH", '{"jwks_file": "jwks.json", "leeway": 5}')
    with pytest.raises(InvalidSetting) as refused:
        load_settings(GatewaySettings)
    assert str(refused.value).startswith("AGENTMESH_GATEWAY_AUTH: leeway: Extra inputs are not permitted")
    assert "keys jwks_file, jwks_reload_interval_s" in str(refused.value)


def test_good_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_GATEWAY_PORT", "6000")
    assert load_settings(GatewaySettings).port == 6000
