"""`python -m bench.write_path` runs real agents on PostgreSQL behind the hop and prints its table
(a tiny load; speed is never checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import write_path
from tests.bench.modules import run_bench, tiny_postgres_run


@tiny_postgres_run
def test_a_tiny_run_measures_every_setting_and_the_floor(tmp_path: Path) -> None:
    done = run_bench(
        "bench.write_path",
        *("--runs", "6", "--callers", "3", "--delays-ms", "0,1", "--agents", "1"),
        *("--floor-seconds", "0.3", "--settle-within", "90", "--out", str(tmp_path), "--no-doc"),
        timeout=170,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "| delay each way | agents | CreateRun/s |" in done.stdout
    assert " | GetRun p99 ms while creating / after | " in done.stdout
    assert "CreateRun/s at 1 ms each way ≥ 0.7x no added delay (1 agent)" in done.stdout
    results = json.loads((tmp_path / "write_path.json").read_text())
    assert [(s["delay_ms"], s["agents"]) for s in results["settings"]] == [(0.0, 1), (1.0, 1)]
    for setting in results["settings"]:
        assert setting["created"] == 6
        assert setting["settled"] == 6
        assert setting["errors"] == {}
        assert setting["create_per_s"] > 0
    assert [f["delay_ms"] for f in results["floors"]] == [0.0, 1.0]
    assert all(f["transactions"] > 0 for f in results["floors"])
    assert (tmp_path / "write_path.md").read_text().startswith("Measured ")


@tiny_postgres_run
def test_a_split_topology_is_measured_beside_the_agents_that_do_everything(tmp_path: Path) -> None:
    done = run_bench(
        "bench.write_path",
        *("--runs", "6", "--callers", "3", "--delays-ms", "1", "--agents", "1,serve+execute"),
        *("--floor-seconds", "0.3", "--settle-within", "90", "--out", str(tmp_path), "--no-doc"),
        timeout=170,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 1 ms | serve+execute | " in done.stdout
    assert "runs settled end to end at 1 ms, agents serve+execute, ≥ 42/s" in done.stdout
    assert "GetRun p99 during the load at 1 ms, 1 agent(s), ≤ 50 ms" in done.stdout
    assert "GetRun p99 during the load at 1 ms, agents serve+execute, ≤ 50 ms" in done.stdout
    results = json.loads((tmp_path / "write_path.json").read_text())
    assert [(s["topology"], s["agents"]) for s in results["settings"]] == [("1", 1), ("serve+execute", 2)]
    split = results["settings"][1]
    assert (split["created"], split["settled"], split["errors"]) == (6, 6, {})
    assert {"agent serve", "agent execute"} <= set(split["cpu_s"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--delays-ms", "one"), "--delays-ms 'one': expected comma-separated numbers"),
        (("--agents", "0"), "--agents '0': every count must be at least 1"),
        (("--agents", "1,serve+run"), "--agents '1,serve+run': expected counts or roles joined by '+'"),
        (("--agents", "serve"), "--agents 'serve': serve has no replica that executes runs"),
        (("--runs", "0"), "--runs: 0 is not a whole number of at least 1"),
        (("--no-such-flag",), "unrecognized arguments: --no-such-flag"),
        (("--agent-setting", "WORKERS"), "--agent-setting 'WORKERS': expected NAME=VALUE"),
    ],
)
def test_a_bad_argument_is_refused_in_one_line(args: tuple[str, ...], message: str) -> None:
    done = run_bench("bench.write_path", *args, timeout=30)

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert message in done.stderr


def test_each_topology_is_held_to_the_getrun_bound_on_its_own() -> None:
    def setting(topology: str, get_p99_ms: float) -> dict[str, object]:
        return {
            "delay_ms": 1.0,
            "topology": topology,
            "agents": 2,
            "create_per_s": 100.0,
            "settled_per_s": 45.0,
            "get_p99_ms": get_p99_ms,
            "deadline_exceeded": 0,
        }

    results = {"settings": [setting("2", 90.0), setting("serve+execute", 30.0)], "floors": []}

    bounds = {b.text: b for b in write_path.targets(results) if b.text.startswith("GetRun p99")}

    assert {text: (b.value, b.met) for text, b in bounds.items()} == {
        "GetRun p99 during the load at 1 ms, 2 agent(s), ≤ 50 ms": (90.0, False),
        "GetRun p99 during the load at 1 ms, agents serve+execute, ≤ 50 ms": (30.0, True),
    }
