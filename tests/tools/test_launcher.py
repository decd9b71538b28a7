"""`make run`'s launcher leaves nothing behind, and a port already taken is one line saying so.

Each case runs `python -m tools.launcher` as a user does, on free loopback ports, with state in a
temporary directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.system import REPO, free_ports

SERVICES = ("rag", "agent", "gateway")


def launcher_env(work_dir: Path) -> dict[str, str]:
    """Every port the launcher listens on, free; no auth (it would write keys into the repository)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH_", "CONSUL_"))}
    ports = iter(free_ports(3 + 2 * len(SERVICES)))
    env = {
        **inherited,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}",
        "AGENTMESH_DEV_AUTH": "0",
        "AGENTMESH_CONSOLE_PORT": str(next(ports)),
        "AGENTMESH_CONSOLE_OTLP_PORT": str(next(ports)),
        "AGENTMESH_PROMETHEUS_PORT": str(next(ports)),
    }
    for name in SERVICES:
        prefix = f"AGENTMESH_{name.upper()}_"
        env[prefix + "PORT"] = str(next(ports))
        env[prefix + "METRICS_PORT"] = str(next(ports))
        env[prefix + "DATA_DIR"] = str(work_dir / name)
    return env


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The launcher, its output in a file (a pipe the services inherit could fill and stall them)."""
    output = tmp_path / "launcher.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.launcher"], env=launcher_env(tmp_path), cwd=REPO, stdout=out, stderr=out
        )
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(60)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, waiting for a reaper
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_launcher_killed_by_sigkill_leaves_no_process_behind(
    launched: tuple[subprocess.Popen[bytes], Path],
) -> None:
    launcher, output = launched
    deadline = time.monotonic() + 180
    while b"agentmesh is up" not in output.read_bytes():
        assert launcher.poll() is None, output.read_text()
        assert time.monotonic() < deadline, output.read_text()
        await asyncio.sleep(0.2)
    started = psutil.Process(launcher.pid).children(recursive=True)
    commands = [" ".join(child.cmdline()) for child in started]
    for module in ("services.rag", "services.agent", "services.gateway", "console"):
        assert any(f"-m {module}" in command for command in commands), commands

    launcher.kill()  # as an OOM kill or a crashed terminal does
    launcher.wait()

    deadline = time.monotonic() + 60
    try:
        while survivors := [child for child in started if not gone(child.pid)]:
            assert time.monotonic() < deadline, [" ".join(s.cmdline()) for s in survivors]
            await asyncio.sleep(0.2)
    finally:  # a failure must not leave them running either
        for child in started:
            with contextlib.suppress(psutil.Error):
                child.kill()


def run_launcher(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tools.launcher"]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


@contextlib.contextmanager
def holding(port: str, argv: list[str], env: dict[str, str]) -> Iterator[int]:
    """``argv`` running, listening on ``port`` (it prints a line once it does); its pid."""
    with subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout is not None
            holder.stdout.readline()
            yield holder.pid
        finally:
            holder.kill()


PORT_SETTINGS = [
    "AGENTMESH_CONSOLE_PORT",
    "AGENTMESH_CONSOLE_OTLP_PORT",
    "AGENTMESH_PROMETHEUS_PORT",
    *(f"AGENTMESH_{name.upper()}_{port}" for name in SERVICES for port in ("PORT", "METRICS_PORT")),
]


@pytest.mark.parametrize("setting", PORT_SETTINGS)
def test_a_port_taken_by_an_earlier_run_is_one_line_naming_it_its_setting_and_its_holder(
    tmp_path: Path, setting: str
) -> None:
    env = launcher_env(tmp_path)
    port = env[setting]
    # A process of ours left over: the Consul double is the lightest thing the launcher runs.
    with holding(port, [sys.executable, "-m", "tools.consul_double", "--port", port], env) as pid:
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
