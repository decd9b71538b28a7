"""Running a bench command as a user does: `python -m bench.<module> ...` from the repository."""

from __future__ import annotations

import subprocess
import sys

from bench.processes import REPO, python_env


def run_bench(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
