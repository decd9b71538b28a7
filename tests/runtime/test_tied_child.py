"""A child the launchers start is tied to them: it dies with them, and starting it never forks grpc.

Each case starts a small parent process of its own, so the one killed is never pytest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from runtime.processes import tied_child
from tests.launchers import gone
from tests.system import REPO

pytestmark = pytest.mark.timeout(60)

# Starts a tied `sleep`, prints its pid, then waits to be killed.
PARENT = """
import subprocess, sys, time
from runtime.processes import tied_child
child = subprocess.Popen(**tied_child(["sleep", "60"]))
print(child.pid, flush=True)
time.sleep(60)
"""

# A grpc.aio server and three clients calling it without pause while tied children are started
# beside them: what `make run`'s launcher does while it waits for each service to be SERVING.
GRPC_PARENT = """
import asyncio, subprocess, sys
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from runtime.processes import tied_child

async def calling(address):
    async with grpc.aio.insecure_channel(address) as channel:
        while True:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    callers = [asyncio.create_task(calling(f"127.0.0.1:{port}")) for _ in range(3)]
    for _ in range(50):
        await asyncio.sleep(0.001)
        code = await asyncio.to_thread(subprocess.Popen(**tied_child(["true"])).wait)
        assert code == 0, code
    for caller in callers:
        caller.cancel()
    print("started 50", flush=True)

asyncio.run(main())
"""


def python(code: str, **env: str) -> subprocess.Popen[bytes]:
    """``python -c code`` with the repository importable; its output piped."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}", **env}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_a_tied_child_dies_when_the_process_that_started_it_is_killed() -> None:
    parent = python(PARENT)
    try:
        assert parent.stdout is not None
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.ppid() == parent.pid
        deadline = time.monotonic() + 10
        while child.name() != "sleep":  # the helper becomes the program once it has tied it
            assert time.monotonic() < deadline, child.cmdline()
            time.sleep(0.05)

        parent.kill()  # SIGKILL, as an OOM kill does: the parent stops nothing itself
        parent.wait()

        deadline = time.monotonic() + 10
        while not gone(child):
            assert time.monotonic() < deadline, child.cmdline()
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.communicate()


def test_a_tied_child_whose_parent_died_before_it_was_tied_ends_at_once() -> None:
    # The helper is told a parent that is not its own: as if the real one died before the prctl.
    args = tied_child(["sleep", "30"], signal.SIGINT)["args"]
    args[args.index(str(os.getpid()))] = "1"
    done = subprocess.run(args, capture_output=True, timeout=20, check=False)
    assert done.returncode == -signal.SIGINT
    assert done.stderr == b""  # ended by the signal itself: no KeyboardInterrupt traceback


def test_starting_tied_children_beside_grpc_calls_runs_none_of_grpcs_fork_handlers() -> None:
    # grpc logs each fork its handlers see ("skipping fork() handlers" at best; at worst they
    # restart its pollers, "epoll_wait error: Bad file descriptor", or abort the child).
    parent = python(GRPC_PARENT, GRPC_VERBOSITY="INFO")
    out, err = parent.communicate(timeout=50)

    assert parent.returncode == 0, err.decode()
    assert out == b"started 50\n"
    assert b"fork" not in err, err.decode()[:2000]
    assert b"epoll_wait" not in err, err.decode()[:2000]


def test_a_program_that_does_not_exist_is_refused_before_anything_starts() -> None:
    with pytest.raises(FileNotFoundError, match="no-such-program-here"):
        tied_child(["no-such-program-here", "--flag"])
