"""A bad setting stops a service with one line naming the variable and what it accepts, never a traceback.

Each case runs `python -m services.<name>` (or the console, or `make run`'s launcher) as an operator
would, in an empty directory (no `.env`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import pytest

from runtime.settings_errors import EXIT_INVALID_SETTING
from tests.system import REPO

MODULES = {"console": "console", "launcher": "tools.launcher"}  # the rest are services.<name>


async def start_and_refuse(
    service: str, setting: str, value: str, work_dir: Path, more_env: dict[str, str] | None = None
) -> list[str]:
    """The stderr lines of ``service`` started with ``setting=value``, asserting it exits EXIT_INVALID_SETTING."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH_", "CONSUL_"))}
    prefix = f"AGENTMESH_{service.upper()}_"
    env = {
        **inherited,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}",
        f"{prefix}PORT": "0",
        f"{prefix}DATA_DIR": str(work_dir / "data"),
        setting: value,
        **(more_env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", MODULES.get(service, f"services.{service}"), cwd=work_dir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:  # it started instead of refusing: never leave it running
            process.kill()
            await process.wait()
    stderr = err.decode()
    assert process.returncode == EXIT_INVALID_SETTING, stderr
    assert "Traceback" not in stderr
    return stderr.splitlines()


def _ids(cases: list[tuple[str, str, str, str]]) -> list[str]:
    return [f"{service}-{setting}" for service, setting, *_ in cases]


# (service, variable, value, what the line must say): refused while the settings are read.
READ_TIME = [
    ("gateway", "AGENTMESH_GATEWAY_AUTH", "", "AGENTMESH_GATEWAY_AUTH is empty; expected a JSON object with keys"),
    ("gateway", "AGENTMESH_GATEWAY_PORT", "abc", "AGENTMESH_GATEWAY_PORT: Input should be a valid integer"),
    ("gateway", "AGENTMESH_GATEWAY_ROUTES", "agent", "AGENTMESH_GATEWAY_ROUTES: not valid JSON"),
    ("gateway", "AGENTMESH_GATEWAY_TLS", "{}", "AGENTMESH_GATEWAY_TLS: cert_file: Field required, key_file"),
    ("gateway", "AGENTMESH_GATEWAY_HTTP_PORT", "99999", "expected an integer from 0 to 65535"),
    ("gateway", "AGENTMESH_GATEWAY_MCP_TOOLS", "Search", "AGENTMESH_GATEWAY_MCP_TOOLS: not valid JSON"),
    ("gateway", "AGENTMESH_BREAKER__CONSECUTIVE_FAILURES", "x", "AGENTMESH_BREAKER__CONSECUTIVE_FAILURES: "),
    ("agent", "AGENTMESH_AGENT_LOG_LEVEL", "LOUD", "expected one of DEBUG, INFO, WARNING, ERROR"),
    ("agent", "AGENTMESH_AGENT_WORKERS", "0", "AGENTMESH_AGENT_WORKERS: Input should be greater than or equal to 1"),
    ("agent", "AGENTMESH_AGENT_SAGA_LEASE_S", "1", "AgentSettings (AGENTMESH_AGENT_*): saga_lease_s (1.0) must exceed"),
    ("agent", "AGENTMESH_AGENT_DATABASE_URL", "mysql://db/agent", "AGENTMESH_AGENT_DATABASE_URL: 'mysql' is not a"),
    ("agent", "AGENTMESH_AGENT_MODEL_CACHE_DIR", "", "AGENTMESH_AGENT_MODEL_CACHE_DIR is empty; expected a path"),
    ("agent", "AGENTMESH_AGENT_FALLBACK_RULES", '[{"pattern": "(", "answer": "x"}]', "is not a regular expression"),
    ("rag", "AGENTMESH_RAG_DENSE_ENABLED", "maybe", "AGENTMESH_RAG_DENSE_ENABLED: Input should be a valid boolean"),
    ("rag", "AGENTMESH_RAG_DATA_DIR", "", "AGENTMESH_RAG_DATA_DIR is empty; expected a path"),
    ("rag", "AGENTMESH_RAG_MODEL_CACHE_DIR", "/dev/null", "AGENTMESH_RAG_MODEL_CACHE_DIR: names something that is"),
    ("rag", "AGENTMESH_RAG_METRICS_PORT", "99999", "expected an integer from 0 to 65535"),
    ("rag", "AGENTMESH_DISCOVERY", "zookeeper", "AGENTMESH_DISCOVERY: Input should be 'static' or 'consul'"),
    ("rag", "AGENTMESH_CHECK_INTERVAL_SECONDS", "-1", "AGENTMESH_CHECK_INTERVAL_SECONDS: Input should be greater"),
    ("console", "AGENTMESH_CONSOLE_PORT", "x", "AGENTMESH_CONSOLE_PORT: Input should be a valid integer"),
    # `make run` reads every service's settings before it starts any of them.
    ("launcher", "AGENTMESH_GATEWAY_AUTH", "", "AGENTMESH_GATEWAY_AUTH is empty; expected a JSON object with keys"),
    ("launcher", "AGENTMESH_RAG_PORT", "abc", "AGENTMESH_RAG_PORT: Input should be a valid integer"),
    ("launcher", "AGENTMESH_CONSOLE_PORT", "abc", "AGENTMESH_CONSOLE_PORT: expected a port from 1 to 65535"),
]


@pytest.mark.parametrize(("service", "setting", "value", "says"), READ_TIME, ids=_ids(READ_TIME))
async def test_a_bad_setting_is_one_line_naming_it(
    tmp_path: Path, service: str, setting: str, value: str, says: str
) -> None:
    [line] = await start_and_refuse(service, setting, value, tmp_path)
    assert says in line
    assert "expected" in line or "must" in line or "not" in line


@pytest.mark.parametrize("service", ["agent", "rag", "gateway"])
async def test_a_bad_setting_is_refused_before_the_server_is_imported(tmp_path: Path, service: str) -> None:
    # The server's modules are seconds of imports a refusal has no use for (runtime/entry.py).
    # PYTHONPROFILEIMPORTTIME (-X importtime) writes a line to stderr for each module imported.
    setting = f"AGENTMESH_{service.upper()}_PORT"
    lines = await start_and_refuse(service, setting, "abc", tmp_path, {"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert f"services.{service}.config" in imported  # the settings were read, and the listing is whole
    assert f"services.{service}.server" not in imported
    assert "runtime.bootstrap" not in imported
    [line] = [line for line in lines if not line.startswith("import time:")]
    assert line.startswith(f"{setting}: Input should be a valid integer")


def _not_a_log_line(line: str) -> bool:
    try:
        return not isinstance(json.loads(line), dict)
    except ValueError:
        return True


# Refused while the server is built or starts (a file it must open, an engine it must load): the
# structured log lines of the build come first, then the one line that names the setting.
BUILD_TIME = [
    ("agent", "AGENTMESH_AGENT_DECISION_ENGINE", "gpt", "AGENTMESH_AGENT_DECISION_ENGINE=gpt"),
    (
        "agent",
        "AGENTMESH_AGENT_DECISION_ENGINE_OPTIONS",
        '{"embedding_cache_size": -1}',
        "AGENTMESH_AGENT_DECISION_ENGINE=extractive with AGENTMESH_AGENT_DECISION_ENGINE_OPTIONS: embedding_cache_size",
    ),
    ("agent", "AGENTMESH_AGENT_AUTH", '{"jwks_file": "/nonexistent/jwks.json"}', "AGENTMESH_AGENT_AUTH: /nonexistent"),
    # The sentence model's thread count, read by the default engine as the agent starts.
    ("agent", "OMP_NUM_THREADS", "two", "OMP_NUM_THREADS must be a whole number of threads for the sentence model"),
    ("gateway", "AGENTMESH_GATEWAY_DESCRIPTOR_SET", "/nonexistent/set.pb", "AGENTMESH_GATEWAY_DESCRIPTOR_SET: /non"),
    (
        "gateway",
        "AGENTMESH_GATEWAY_TLS",
        '{"cert_file": "/no/c.pem", "key_file": "/no/k.pem"}',
        "AGENTMESH_GATEWAY_TLS",
    ),
]


@pytest.mark.parametrize(("service", "setting", "value", "says"), BUILD_TIME, ids=_ids(BUILD_TIME))
async def test_a_setting_that_fails_the_build_is_one_line_naming_it(
    tmp_path: Path, service: str, setting: str, value: str, says: str
) -> None:
    lines = await start_and_refuse(service, setting, value, tmp_path)
    [line] = [line for line in lines if _not_a_log_line(line)]
    assert line.startswith(says)
    assert lines[-1] == line


async def test_an_http_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        lines = await start_and_refuse("gateway", "AGENTMESH_GATEWAY_HTTP_PORT", port, tmp_path)
    [line] = [line for line in lines if _not_a_log_line(line)]
    assert line.startswith(f"AGENTMESH_GATEWAY_HOST, AGENTMESH_GATEWAY_HTTP_PORT: cannot listen on 127.0.0.1:{port}")
