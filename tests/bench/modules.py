"""Running a bench command as a user does: `python -m bench.<module> ...` from the repository."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import TypeVar

import pytest

from bench.processes import REPO, python_env
from tests.postgres import requires_postgres

_Test = TypeVar("_Test", bound=Callable[..., object])


def tiny_postgres_run(test: _Test) -> _Test:
    """Marks a test that runs a bench module end to end on a local PostgreSQL (up to 3 minutes)."""
    for mark in (requires_postgres, pytest.mark.timeout(180), pytest.mark.postgres, pytest.mark.slow):
        test = mark(test)
    return test


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
