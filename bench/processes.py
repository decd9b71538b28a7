"""The processes of a scenario and what CPU each of them spent.

Every server in a scenario runs in its own process, and so does the client, so that CPU seconds
per 1,000 calls can be given per process: on a shared 2-core machine a throughput ratio alone may
only say who got more of the cores.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tools.serving import wait_serving

REPO = Path(__file__).resolve().parents[1]
# The services that may run the sentence model (their settings have MODEL_CACHE_DIR).
MODEL_SERVICES = ("AGENT", "RAG")


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a `python -m` child: the repo and generated code importable."""
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}", **(extra or {})}


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class Child:
    """A process the harness started; `role` names it in the report ("backend", "gateway", ...)."""

    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    process: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.process = psutil.Process(self.popen.pid)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its live child processes (a service serving from
        several, runtime/processes.py), all their threads, so far."""
        try:
            processes = [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, timeout_s: float = 10) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout_s)


class ProcessGroup:
    """Starts children, waits until each is listening, and stops them all (last started first)."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.children: list[Child] = []
        # Servers that daemonize (PostgreSQL's pg_ctl) are stopped by a callback, after the children.
        self._cleanups: list[Callable[[], None]] = []

    def on_stop(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    def start(
        self,
        role: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        port_file: Path | None = None,
        port: int = 0,
        timeout_s: float = 30,
    ) -> Child:
        """Start `argv`; the port is read from `port_file` once written (or is `port`, if known)."""
        log_path = self.work_dir / f"{role}.log"
        if port_file is not None:
            port_file.unlink(missing_ok=True)
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv), cwd=self.work_dir, env=dict(env) if env is not None else None, stdout=log, stderr=log
            )
        child = Child(role, popen, log_path, port)
        self.children.append(child)
        if port_file is not None:
            child.port = _wait_for_port(child, port_file, timeout_s)
        return child

    def port_file(self, role: str) -> Path:
        """Where `role` is to write its port once listening (passed to it by flag or env)."""
        return self.work_dir / f"{role}.port"

    def cpu(self) -> dict[str, float]:
        return {child.role: child.cpu_seconds() for child in self.children}

    def check_alive(self) -> None:
        for child in self.children:
            if child.popen.poll() is not None:
                raise RuntimeError(f"{child.role} exited with {child.popen.returncode}:\n{child.logs()}")

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            cleanup()


def _wait_for_port(child: Child, port_file: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_file.exists():
            text = port_file.read_text().strip()
            if text:
                return int(text)
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.role} exited with {child.popen.returncode}:\n{child.logs()}")
        time.sleep(0.02)
    child.stop()
    raise TimeoutError(f"{child.role} did not start listening within {timeout_s}s:\n{child.logs()}")


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {role: after[role] - before.get(role, 0.0) for role in after}


async def start_service(group: ProcessGroup, module: str, prefix: str, name: str, work: Path, **settings: str) -> Child:
    """Start ``python -m module`` (a service of this repo) as ``name`` and wait until it is SERVING.

    ``settings`` are its ``AGENTMESH_<prefix>_*`` variables; port 0 with a port file, and a data dir
    of its own under ``work`` unless given.
    """
    values = {"PORT": "0", "PORT_FILE": str(group.port_file(name)), "DATA_DIR": str(work / name)}
    if prefix in MODEL_SERVICES:
        # The run's agents and RAG share one model cache, as replicas on a host can: the sentence
        # model's graph is exported once per run (seconds of CPU), not once per data dir.
        variable = f"AGENTMESH_{prefix}_MODEL_CACHE_DIR"
        values["MODEL_CACHE_DIR"] = os.environ.get(variable) or str(work / "models")
    values |= settings
    env = python_env({f"AGENTMESH_{prefix}_{k}": v for k, v in values.items()})
    child = await asyncio.to_thread(
        group.start, name, python_argv(module), env=env, port_file=group.port_file(name), timeout_s=60
    )
    await wait_serving(name, child.address, exit_code=child.popen.poll, within=600)
    return child
