"""`python -m bench.instructions` counts the chain's own work per call, phase by phase, under callgrind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.instructions import FULL, HANDLER_ALONE, METADATA, measured_phases, own_work, per_call, variant_names
from tests.bench.modules import run_bench


def test_each_concerns_own_work_is_the_full_chain_less_the_chain_without_it() -> None:
    names = variant_names(["Tracing", "Auth"])
    assert names == [HANDLER_ALONE, METADATA, FULL, "without Tracing", "without Auth"]

    costs = per_call([1_000, 3_000, 11_000, 8_000, 9_000], names, calls=10)

    assert costs == {HANDLER_ALONE: 0, METADATA: 200, FULL: 1_000, "without Tracing": 700, "without Auth": 800}
    assert own_work(costs) == {"Tracing": 300, "Auth": 200}


def test_only_the_parts_between_two_marks_are_measured_phases(tmp_path: Path) -> None:
    # Part 1 runs up to the first mark (start-up), then measured and unmeasured parts alternate.
    for part, summary in {1: 999_999, 2: 10, 3: 5, 4: 20, 10: 40, 9: 7, 5: 3, 6: 30, 7: 1, 8: 35}.items():
        (tmp_path / f"callgrind.out.{part}").write_text(f"creator: callgrind\nsummary: {summary}\ntotals: 0\n")

    assert measured_phases(sorted(tmp_path.iterdir())) == [10, 20, 30, 35, 40]


def test_a_phase_count_that_does_not_match_the_variants_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected 2 measured phases, callgrind dumped 1"):
        per_call([5], [HANDLER_ALONE, FULL], calls=1)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind (Debian valgrind) is not installed")
def test_the_chain_and_its_dearest_concerns_cost_instructions_of_their_own(tmp_path: Path) -> None:
    out = tmp_path / "instructions.json"
    done = run_bench("bench.instructions", "--calls", "200", "--warmup", "20", "--out", str(out), timeout=540)

    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["per_call"][HANDLER_ALONE] == 0
    own = result["own_work"]
    assert set(own) >= {"TracingInterceptor", "AccessLogInterceptor", "AuthInterceptor", "MetricsInterceptor"}
    # Each concern costs something, and together they are most of the chain (the rest is shared).
    assert all(cost > 0 for cost in (own["AccessLogInterceptor"], own["AuthInterceptor"], own["TracingInterceptor"]))
    assert 0 < sum(own.values()) < result["per_call"][FULL]
    assert 0 < result["per_call"][METADATA] < result["shared"]  # the metadata read is part of the shared work
    assert "full chain" in done.stdout


def test_bad_arguments_get_one_line_naming_them() -> None:
    done = run_bench("bench.instructions", "--calls", "0", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "--calls must be positive and --warmup not negative"
