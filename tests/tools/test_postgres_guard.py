"""The tests' PostgreSQL clusters (started detached by pg_ctl) do not outlive a test run killed outright."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.postgres import requires_postgres
from tests.system import REPO, wait_until

# A test session in miniature: a throwaway cluster held until the process is killed.
SESSION = """
import sys
from tests.postgres import _throwaway_cluster
with _throwaway_cluster() as cluster:
    print(cluster.root, flush=True)
    sys.stdin.read()
"""


@requires_postgres
@pytest.mark.timeout(120)
async def test_a_session_killed_by_sigkill_leaves_no_server_and_no_directory() -> None:
    session = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SESSION, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert session.stdout is not None
    root = Path((await asyncio.wait_for(session.stdout.readline(), 90)).decode().strip())
    server = psutil.Process(int((root / "data" / "postmaster.pid").read_text().split()[0]))
    assert server.is_running()

    session.kill()
    await session.wait()

    async def gone() -> bool:
        return not server.is_running() and not root.parent.exists()

    await wait_until(gone, timeout_s=60)
