"""The report gives each process's cost per call in µs and in vCPU per 1,000 calls/s (Istio's unit)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import report
from bench.scenarios import Scenario, Target
from bench.topology import Direct, ViaGateway


def _run(rps: float, cpu_s_per_1k: dict[str, float]) -> dict[str, Any]:
    return {
        "rps": rps,
        "messages": rps,
        "elapsed_s": 1.0,
        "calls": int(rps),
        "errors": {},
        "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 4.0},
        "cpu_s_per_1k": cpu_s_per_1k,
    }


MACHINE = {
    "cpu": "x",
    "cores": 2,
    "memory_gb": 1,
    "os": "linux",
    "python": "3.11",
    "grpcio": "1",
    "h2load": "h2load",
    "load_average_at_start": [0, 0, 0],
}


def _settings(passes: int) -> dict[str, Any]:
    return {"concurrency": 32, "warmup_s": 0.5, "duration_s": 1.5, "passes": passes}


def _build() -> dict[str, Any]:
    scenarios = [
        Scenario("bare", "baseline", Direct(), clients=("h2load",)),
        Scenario("gateway", "one hop", ViaGateway(), clients=("h2load",)),
    ]
    results = {
        "bare": {"h2load": [_run(4000, {"backend": 0.25, "client": 0.02})]},
        "gateway": {"h2load": [_run(2000, {"gateway": 0.5, "backend": 0.3, "client": 0.02})]},
    }
    targets = [Target("gateway ≤ 2x", "gateway", "h2load", "process_cpu_ratio.gateway", 2.0, at_least=False)]
    built = report.build(scenarios, results, targets, machine=MACHINE, settings=_settings(1), wall_s=1.0)
    built["started_at"] = "now"
    return built


def test_each_process_is_costed_per_call_and_in_vcpu_per_thousand_calls_per_second() -> None:
    built = _build()
    gateway = built["scenarios"][1]["clients"]["h2load"]
    assert gateway["cpu_us_per_call"] == {"gateway": 500.0, "backend": 300.0, "client": 20.0}
    assert gateway["vcpu_per_1k_rps"] == {"gateway": 0.5, "backend": 0.3, "client": 0.02}
    # The servers' 0.8 vCPU per 1,000 calls/s against the bare server's 0.25: 0.55 added by the hop.
    assert gateway["added_vcpu_per_1k_rps"] == pytest.approx(0.55)
    assert gateway["process_cpu_ratio"] == {"gateway": pytest.approx(2.0), "backend": pytest.approx(1.2)}


def test_a_target_can_bound_one_process_against_a_bare_server() -> None:
    [target] = _build()["targets"]
    assert target["value"] == pytest.approx(2.0)
    assert target["met"] is True


def test_the_markdown_states_every_layer_in_istios_unit() -> None:
    text = report.markdown(_build())
    assert "CPU µs per call (per process)" in text
    assert "| gateway | gateway 0.50 · backend 0.30 | 0.80 | +0.55 | gateway 2.00x · backend 1.20x |" in text
    assert "vCPU per 1,000 calls/s" in text


def test_each_pass_is_compared_with_the_baseline_measured_in_the_same_pass() -> None:
    # The machine's speed swung between passes; the chain ran at half the baseline's rate in the two
    # passes where the baseline ran at 6,000 and 8,000 calls/s, and at 0.9x in the slow first pass.
    scenarios = [
        Scenario("bare", "baseline", Direct(), clients=("h2load",)),
        Scenario("chain", "the chain", Direct(), clients=("h2load",)),
    ]
    # The bare baseline runs at both ends of every pass: two runs a pass.
    bare = [_run(rate, {"backend": 1000 / rate}) for rate in (4000, 4000, 5000, 7000, 7000, 9000)]
    chain = [_run(rate, {"backend": 1000 / rate}) for rate in (3600, 3000, 4000)]
    targets = [Target("chain ≥ 0.55x", "chain", "h2load", "ratio", 0.55)]
    built = report.build(
        scenarios,
        {"bare": {"h2load": bare}, "chain": {"h2load": chain}},
        targets,
        machine=MACHINE,
        settings=_settings(3),
        wall_s=1.0,
    )
    built["started_at"] = "now"

    # The baseline is 1.00x of itself in every pass, whichever of its two runs was faster.
    assert built["scenarios"][0]["clients"]["h2load"]["ratio"] == pytest.approx(1.0)
    measured = built["scenarios"][1]["clients"]["h2load"]
    # Medians of the runs alone would say 3,600 / 6,000 = 0.6x.
    assert measured["ratio"] == pytest.approx(0.5)
    [target] = built["targets"]
    assert target["passes"] == [pytest.approx(0.9), pytest.approx(0.5), pytest.approx(0.5)]
    assert target["met"] is False
    assert "| chain ≥ 0.55x | h2load | 0.50x (0.50-0.90) | **missed** |" in report.markdown(built)


def test_a_target_value_just_short_of_its_bound_does_not_print_as_the_bound() -> None:
    fmt = report._fmt_target_value
    assert fmt(0.799, 0.8) == "0.799x"  # "0.80x missed" would read as a mistake
    assert fmt(0.8, 0.8) == "0.80x"
    assert fmt(0.62, 0.8) == "0.62x"
    assert fmt(None, 0.8) == "n/a"
