"""Run a launcher (`make run`, `make run MESH=envoy`) as a user does, then kill it as an OOM kill does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil

from tests.system import MODEL_CACHE_VARIABLES, REPO

BANNER = b"agentmesh is up"


@contextlib.contextmanager
def launcher(module: str, env: Mapping[str, str], work_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``python -m module`` with its output in a file (a pipe its children inherit could fill and stall them)."""
    output = work_dir / "launcher.out"
    with output.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", module], env=dict(env), cwd=REPO, stdout=out, stderr=out)
    try:
        yield process, output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(60)


def wait_up(process: subprocess.Popen[bytes], output: Path, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while BANNER not in output.read_bytes():
        assert process.poll() is None, output.read_text()
        assert time.monotonic() < deadline, output.read_text()
        time.sleep(0.2)


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # dead, waiting for a reaper
    except psutil.NoSuchProcess:
        return True


def kill_and_find_no_survivor(process: subprocess.Popen[bytes], within_s: float = 60) -> list[str]:
    """SIGKILL ``process``; wait until every process it had started is gone. Their command lines."""
    started = psutil.Process(process.pid).children(recursive=True)
    commands = []
    for child in started:
        with contextlib.suppress(psutil.NoSuchProcess):  # one that ended since it was listed
            commands.append(" ".join(child.cmdline()))
    process.kill()  # as an OOM kill or a crashed terminal does: the launcher stops nothing itself
    process.wait()
    deadline = time.monotonic() + within_s
    try:
        while survivors := [child for child in started if not gone(child)]:
            assert time.monotonic() < deadline, ([s.pid for s in survivors], commands)
            time.sleep(0.2)
    finally:  # a failure must not leave them running either
        for child in started:
            with contextlib.suppress(psutil.Error):
                child.kill()
    return commands


def clean_env() -> dict[str, str]:
    """The environment without agentmesh's or Consul's settings, and with the repository importable.

    The suite's shared model cache is kept: a service that starts loading its model there opens the
    graph instead of exporting one into a throwaway data dir.
    """
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("AGENTMESH_", "CONSUL_")) or k in MODEL_CACHE_VARIABLES
    }
    return {**inherited, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}"}


# No sentence model loaded by rag or the agent (a model process per start, seconds on a loaded machine):
# what a launcher test checks is which processes run, not how answers are ranked.
NO_MODEL = {"AGENTMESH_RAG_DENSE_ENABLED": "false", "AGENTMESH_AGENT_DECISION_ENGINE_OPTIONS": '{"semantic": false}'}


@contextlib.contextmanager
def holding(port: str, argv: list[str], env: Mapping[str, str]) -> Iterator[int]:
    """``argv`` running, listening on ``port`` (it prints a line once it does); its pid."""
    with subprocess.Popen(argv, env=dict(env), cwd=REPO, stdout=subprocess.PIPE) as holder:
        try:
            assert holder.stdout is not None
            holder.stdout.readline()
            yield holder.pid
        finally:
            holder.kill()


def our_leftover(port: str) -> list[str]:
    """The command of a process of ours that listens on ``port`` (the Consul double is the lightest)."""
    return [sys.executable, "-m", "tools.consul_double", "--port", port]
