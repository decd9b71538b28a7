"""`make run`'s launcher leaves nothing behind, and a port already taken is one line saying so.

Each case runs `python -m tools.launcher` as a user does, on free loopback ports, with state in a
temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.launchers import NO_MODEL, clean_env, holding, kill_and_find_no_survivor, launcher, our_leftover, wait_up
from tests.ports import free_ports
from tests.system import REPO

SERVICES = ("rag", "agent", "gateway")


def launcher_env(work_dir: Path) -> dict[str, str]:
    """Every port the launcher listens on, free; no auth (it would write keys into the repository)."""
    ports = iter(free_ports(4 + 2 * len(SERVICES)))
    env = {
        **clean_env(),
        "AGENTMESH_DEV_AUTH": "0",
        **NO_MODEL,
        "AGENTMESH_CONSOLE_PORT": str(next(ports)),
        "AGENTMESH_CONSOLE_OTLP_PORT": str(next(ports)),
        "AGENTMESH_PROMETHEUS_PORT": str(next(ports)),
        "AGENTMESH_GATEWAY_HTTP_PORT": str(next(ports)),
    }
    for name in SERVICES:
        prefix = f"AGENTMESH_{name.upper()}_"
        env[prefix + "PORT"] = str(next(ports))
        env[prefix + "METRICS_PORT"] = str(next(ports))
        env[prefix + "DATA_DIR"] = str(work_dir / name)
    return env


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_launcher_killed_by_sigkill_leaves_no_process_behind(tmp_path: Path) -> None:
    with launcher("tools.launcher", launcher_env(tmp_path), tmp_path) as (process, output):
        wait_up(process, output, within_s=180)

        commands = kill_and_find_no_survivor(process)

    for module in ("services.rag", "services.agent", "services.gateway", "console"):
        assert any(f"-m {module}" in command for command in commands), commands


def run_launcher(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tools.launcher"]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


PORT_SETTINGS = [
    "AGENTMESH_CONSOLE_PORT",
    "AGENTMESH_CONSOLE_OTLP_PORT",
    "AGENTMESH_PROMETHEUS_PORT",
    "AGENTMESH_GATEWAY_HTTP_PORT",
    *(f"AGENTMESH_{name.upper()}_{port}" for name in SERVICES for port in ("PORT", "METRICS_PORT")),
]


@pytest.mark.parametrize("setting", PORT_SETTINGS)
def test_a_port_taken_by_an_earlier_run_is_one_line_naming_it_its_setting_and_its_holder(
    tmp_path: Path, setting: str
) -> None:
    env = launcher_env(tmp_path)
    port = env[setting]
    # A process of ours left over: the Consul double is the lightest thing the launcher runs.
    with holding(port, our_leftover(port), env) as pid:
        result = run_launcher(env)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert f"port {port} is already taken ({setting} moves it): pid {pid} holds it" in line
    assert "left running by an earlier agentmesh run" in line


LISTEN = "import socket, time; s = socket.create_server(('127.0.0.1', {port})); print(flush=True); time.sleep(60)"


def test_a_port_taken_by_another_program_names_that_program(tmp_path: Path) -> None:
    env = launcher_env(tmp_path)
    port = env["AGENTMESH_GATEWAY_PORT"]
    with holding(port, [sys.executable, "-c", LISTEN.format(port=port)], env) as pid:
        result = run_launcher(env)

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert f"port {port} is already taken (AGENTMESH_GATEWAY_PORT moves it): pid {pid} holds it" in line
    assert "earlier" not in line
