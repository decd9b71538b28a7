"""Agent settings refuse combinations that would break the runtime's guarantees."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.agent.config import POOL_HEADROOM, AgentSettings


def test_the_saga_lease_must_outlast_the_longest_step() -> None:
    with pytest.raises(ValidationError, match="must exceed the longest step timeout"):
        AgentSettings(saga_lease_s=5, decision_timeout_s=10)


def test_engine_options_and_fallback_rules_are_read_from_json_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTMESH_AGENT_DECISION_ENGINE", "http")
    monkeypatch.setenv(
        "AGENTMESH_AGENT_DECISION_ENGINE_OPTIONS", '{"url": "http://127.0.0.1:8000/v1/chat/completions"}'
    )
    monkeypatch.setenv("AGENTMESH_AGENT_FALLBACK_RULES", '[{"pattern": "refund", "answer": "See the refund page."}]')
    settings = AgentSettings()
    assert settings.decision_engine == "http"
    assert settings.decision_engine_options == {"url": "http://127.0.0.1:8000/v1/chat/completions"}
    assert settings.fallback_rules[0].answer == "See the refund page."


def test_the_pool_holds_a_connection_per_worker_and_the_headroom_unless_set() -> None:
    assert AgentSettings(workers=16).database_connections == 16 + POOL_HEADROOM
    assert AgentSettings(workers=16, database_pool_size=12).database_connections == 12
