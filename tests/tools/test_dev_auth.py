"""`make run`'s dev credentials: the console's token reads runs and can do nothing else."""

from __future__ import annotations

from pathlib import Path

import jwt

from runtime.security import MESH_REQUIRED_SCOPES
from tools.dev_auth import ensure_dev_auth


def test_the_console_token_carries_only_the_read_scope_for_runs(tmp_path: Path) -> None:
    auth = ensure_dev_auth(tmp_path / "keys")
    claims = jwt.decode(auth.console_token_file.read_text().strip(), options={"verify_signature": False})
    assert claims["sub"] == "agentmesh-console"
    assert claims["scope"].split() == ["runs.read"]
    allowed = {method for method, scopes in MESH_REQUIRED_SCOPES.items() if set(scopes) <= {"runs.read"}}
    assert allowed == {
        "/agentmesh.agent.v1.AgentService/GetRun",
        "/agentmesh.agent.v1.AgentService/ListRuns",
        "/agentmesh.agent.v1.AgentService/WatchRun",
        "/agentmesh.agent.v1.AgentService/GetRunStats",
        # The same runs read through A2A: tasks are runs, and reading them needs the same scope.
        "/lf.a2a.v1.A2AService/GetTask",
        "/lf.a2a.v1.A2AService/ListTasks",
        "/lf.a2a.v1.A2AService/SubscribeToTask",
        "/lf.a2a.v1.A2AService/GetTaskPushNotificationConfig",
        "/lf.a2a.v1.A2AService/ListTaskPushNotificationConfigs",
        "/lf.a2a.v1.A2AService/GetExtendedAgentCard",
    }
