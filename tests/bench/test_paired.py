"""`python -m bench.paired` runs two scenarios at once at one rate and compares a process's CPU per call."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.bench.modules import run_bench

pytestmark = pytest.mark.slow


def _paired(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_bench("bench.paired", *args, "--work-dir", str(tmp_path / "work"), timeout=60)


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) is not installed")
def test_two_scenarios_are_driven_together_and_compared_per_round(tmp_path: Path) -> None:
    done = _paired(
        tmp_path, "bare", "gateway-floor", "--role", "backend", "--rate", "200", "--seconds", "1", "--rounds", "2"
    )

    assert done.returncode == 0, done.stderr
    rounds = re.findall(
        r"round \d: bare (\d+) µs, gateway-floor (\d+) µs per call \(backend\); B/A ([\d.]+)", done.stdout
    )
    assert len(rounds) == 2
    assert all(float(a) > 0 and float(b) > 0 for a, b, _ in rounds)
    assert re.search(r"median [\d.]+ \(range [\d.]+-[\d.]+ over 2 rounds\)", done.stdout)


def test_a_scenario_it_cannot_pair_is_refused_in_one_line(tmp_path: Path) -> None:
    done = _paired(tmp_path, "bare", "stream")

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "scenario 'stream' cannot be paired; use one of" in done.stderr


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) is not installed")
def test_a_role_the_scenario_lacks_is_named(tmp_path: Path) -> None:
    done = _paired(tmp_path, "bare", "bare", "--role", "gateway", "--rate", "100", "--seconds", "0.5", "--rounds", "1")

    assert done.returncode == 2
    assert done.stderr == "--role gateway: bare has no such process; it has backend\n"
