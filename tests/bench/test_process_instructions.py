"""`python -m bench.process_instructions` counts one process's instructions per call of a running scenario."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.callgrind import summary_of
from tests.bench.modules import run_bench


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return run_bench("bench.process_instructions", *args, timeout=timeout)


def test_a_dumps_count_is_its_summary_line(tmp_path: Path) -> None:
    dump = tmp_path / "callgrind.out.1"
    dump.write_text("version: 1\ncreator: callgrind-3.19.0\nsummary: 123456\ntotals: 123456\n")
    assert summary_of(dump) == 123456
    dump.write_text("version: 1\n")
    with pytest.raises(ValueError, match="no summary line"):
        summary_of(dump)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bare"], "give SCENARIO:ROLE pairs (e.g. gateway:gateway) and a positive --calls"),
        (["bare:backend", "--calls", "0"], "give SCENARIO:ROLE pairs (e.g. gateway:gateway) and a positive --calls"),
        (["nosuch:backend"], "unknown scenarios ['nosuch']"),
    ],
)
def test_bad_arguments_get_one_line_naming_them(args: list[str], message: str) -> None:
    done = _run(*args, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(message) and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind (Debian valgrind) is not installed")
@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (Debian nghttp2-client) is not installed")
def test_the_measured_process_is_counted_over_exactly_the_calls_sent(tmp_path: Path) -> None:
    out = tmp_path / "counted.json"
    done = _run("bare:backend", "--calls", "200", "--out", str(out), timeout=540)

    assert done.returncode == 0, done.stderr
    [bare] = json.loads(out.read_text())["counted"]
    assert (bare["scenario"], bare["role"], bare["calls"]) == ("bare", "backend", 200)
    # A grpc.aio server runs hundreds of thousands of instructions per unary call, not millions.
    assert 100_000 < bare["per_call"] < 2_000_000
    assert bare["ratio"] == 1.0
