"""Stopping a child the launchers started: SIGTERM, then SIGKILL past the wait, and always reaped."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from runtime.processes import start_tied, stop_child, tied_child

# Says it is ready, then sleeps; with "stubborn" it ignores SIGTERM.
CHILD = """
import signal, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["popen", "asyncio"])
@pytest.mark.parametrize(("behaviour", "exit_code"), [("polite", -15), ("stubborn", -9)])
async def test_a_child_is_stopped_by_sigterm_or_else_killed_and_reaped(
    kind: str, behaviour: str, exit_code: int
) -> None:
    command = [sys.executable, "-c", CHILD, behaviour]
    process: subprocess.Popen[bytes] | asyncio.subprocess.Process
    if kind == "popen":
        process = subprocess.Popen(**tied_child(command), stdout=subprocess.PIPE)  # noqa: ASYNC220  # as the launchers do
        assert process.stdout is not None
        assert await asyncio.to_thread(process.stdout.readline) == b"ready\n"
    else:
        process = await start_tied(command, stdout=subprocess.PIPE)
        assert process.stdout is not None
        assert await process.stdout.readline() == b"ready\n"

    await stop_child(process, within_s=0.5)

    assert process.returncode == exit_code
    await stop_child(process, within_s=0.5)  # a stopped child is left as it is
    assert process.returncode == exit_code
    if isinstance(process, subprocess.Popen):
        assert process.stdout is not None
        process.stdout.close()
