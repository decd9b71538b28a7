"""A throwaway redis-server on a free loopback port, for tests that need real Redis Streams."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runtime.processes import tied_child
from tests.ports import free_port


@contextmanager
def redis_server(workdir: Path, *, port: int | None = None) -> Iterator[str]:
    """Start redis-server (no persistence) and yield its URL; skip the test if Redis is not installed.

    ``port``: a given one, to start a server again where a stopped one was."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (apt-get install -y redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir)]
    command += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
    process = subprocess.Popen(
        **tied_child(command),  # a pytest killed outright takes its Redis with it
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        # Event-driven readiness: redis logs this line once it accepts connections.
        output = []
        for line in process.stdout:
            output.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server exited with code {process.wait()}:\n{''.join(output)}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
