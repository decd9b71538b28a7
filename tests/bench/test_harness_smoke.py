"""`python -m bench` runs end to end and writes a report of the documented shape (speed is never checked)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.processes import REPO, python_env

pytestmark = pytest.mark.slow


def _run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "results"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            *args,
            "--passes",
            "1",
            "--warmup",
            "0.2",
            "--duration",
            "0.5",
            "--concurrency",
            "4",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
            "--no-doc",
        ],
        cwd=REPO,
        env=python_env(),
        check=True,
        capture_output=True,
        timeout=50,
    )
    assert (out / "latest.md").read_text().startswith("Measured ")
    return json.loads((out / "latest.json").read_text())


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) is not installed")
def test_one_scenario_is_measured_by_both_clients_with_cpu_per_process(tmp_path: Path) -> None:
    report = _run_bench(tmp_path, "bare")

    assert {"cpu", "cores", "python", "grpcio", "h2load"} <= report["machine"].keys()
    (bare,) = report["scenarios"]
    assert bare["name"] == "bare"
    assert set(bare["clients"]) == {"h2load", "pyclient"}
    for client in bare["clients"].values():
        assert client["calls"] > 0
        assert client["errors"] == {}
        assert set(client["latency_ms"]) == {"p50", "p90", "p99"}
        assert set(client["cpu_s_per_1k"]) == {"backend", "client"}
        assert client["ratio"] == pytest.approx(1.0)
        assert len(client["runs"]) == 1


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) is not installed")
def test_the_gateway_floor_forwards_every_call_and_is_accounted_as_the_gateway(tmp_path: Path) -> None:
    report = _run_bench(tmp_path, "gateway-floor", "--clients", "h2load")

    floor = next(s for s in report["scenarios"] if s["name"] == "gateway-floor")
    measured = floor["clients"]["h2load"]
    assert measured["calls"] > 0
    assert measured["errors"] == {}
    assert set(measured["cpu_s_per_1k"]) == {"gateway", "backend", "client"}
