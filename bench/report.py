"""Turn measurements into the report: medians across passes, ratios to baselines, targets.

Written as JSON (`bench/results/latest.json`, everything including each pass) and markdown
(`latest.md`, also placed between the bench markers of docs/benchmarks.md).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.payload import EVENTS_PER_STREAM, STREAM, UNARY
from bench.scenarios import Scenario, Target
from tools.doc_block import replace_block

BEGIN = "<!-- bench:begin (written by `make bench`) -->"
END = "<!-- bench:end -->"


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over passes for rates, latencies and CPU; errors and calls summed."""
    roles = sorted({role for run in runs for role in run["cpu_s_per_1k"]}, key=_role_order)
    errors: dict[str, int] = {}
    for run in runs:
        for code, count in run["errors"].items():
            errors[code] = errors.get(code, 0) + count
    return {
        "rps": _median([r["rps"] for r in runs]),
        "messages_per_s": _median([r["messages"] / r["elapsed_s"] if r["elapsed_s"] else 0.0 for r in runs]),
        "latency_ms": {q: _median([r["latency_ms"][q] for r in runs]) for q in ("p50", "p90", "p99")},
        "calls": sum(r["calls"] for r in runs),
        "errors": errors,
        "cpu_s_per_1k": {role: _median([r["cpu_s_per_1k"].get(role, 0.0) for r in runs]) for role in roles},
    }


def _role_order(role: str) -> tuple[int, str]:
    order = ["edge", "outbound", "gateway", "sidecar", "backend", "redis", "client"]
    return (order.index(role) if role in order else len(order) - 1, role)


def build(
    scenarios: Sequence[Scenario],
    results: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    targets: Sequence[Target],
    *,
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
    wall_s: float,
) -> dict[str, Any]:
    by_name = {s.name: s for s in scenarios}
    summaries = {
        name: {client: summarize_runs(runs) for client, runs in clients.items()} for name, clients in results.items()
    }
    passes = int(settings.get("passes") or 1)
    rows: list[dict[str, Any]] = []
    for scenario in scenarios:
        clients: dict[str, Any] = {}
        for client, summary in summaries[scenario.name].items():
            # Where the named baseline was not measured with this client, the bare one is.
            baseline = scenario.baseline if client in summaries.get(scenario.baseline, {}) else "bare"
            runs = results[scenario.name][client]
            # Each pass's figures against the baselines of the same pass, then the median over the
            # passes: a slow swing in the machine's speed between passes cancels out of each ratio.
            # The baseline itself is every run of its pass against the same: 1.00x by definition.
            own = baseline == scenario.name
            per_pass = [
                _ratios(
                    (_pass_summary(runs, number, passes) or summary) if own else summarize_runs([runs[number]]),
                    _pass_summary(results.get(baseline, {}).get(client, ()), number, passes),
                    _pass_summary(results.get("bare", {}).get(client, ()), number, passes),
                )
                for number in range(min(passes, len(runs)) if own else len(runs))
            ]
            ratios = _median_ratios(per_pass)
            clients[client] = {
                **summary,
                "baseline": baseline,
                **ratios,
                # CPU seconds per 1,000 calls is numerically vCPU per 1,000 calls/s (Istio's unit).
                "vcpu_per_1k_rps": summary["cpu_s_per_1k"],
                "cpu_us_per_call": {role: seconds * 1000 for role, seconds in summary["cpu_s_per_1k"].items()},
                "runs": runs,
            }
        rows.append(
            {
                "name": scenario.name,
                "summary": scenario.summary,
                "topology": scenario.topology.describe(),
                "call": scenario.call,
                "baseline": scenario.baseline,
                "clients": clients,
            }
        )
    checked = []
    for target in targets:
        if target.scenario not in by_name:
            continue
        entry = next(r for r in rows if r["name"] == target.scenario)["clients"].get(target.client, {})
        # "process_cpu_ratio.gateway": one process's figure from a per-process mapping.
        field, _, role = target.metric.partition(".")
        value = _pass_value(entry, field, role)
        spread = [v for v in (_pass_value(one, field, role) for one in entry.get("passes", ())) if v is not None]
        checked.append(
            {
                "title": target.title,
                "scenario": target.scenario,
                "client": target.client,
                "metric": target.metric,
                "bound": target.bound,
                "at_least": target.at_least,
                "value": value,
                "passes": spread,
                "met": None if value is None else target.met(value),
            }
        )
    return {
        "machine": dict(machine),
        "settings": dict(settings),
        "payload": {
            "unary": f"{UNARY.method}: {len(UNARY.request)}-byte request, {len(UNARY.responses[0])}-byte response",
            "stream": f"{STREAM.method}: {len(STREAM.request)}-byte request, "
            f"{EVENTS_PER_STREAM} events of {len(STREAM.responses[0])} bytes per call",
        },
        "wall_s": round(wall_s, 1),
        "scenarios": rows,
        "targets": checked,
    }


def _pass_summary(runs: Sequence[Mapping[str, Any]], number: int, passes: int) -> dict[str, Any] | None:
    """The baseline's figures in pass ``number``: the bare baseline runs at both ends of every pass
    (two runs a pass), a named one once; None when that pass has none."""
    if not runs:
        return None
    per_pass = max(1, len(runs) // passes) if len(runs) >= passes else 1
    mine = list(runs[number * per_pass : (number + 1) * per_pass]) or list(runs)
    return summarize_runs(mine)


def _ratios(
    summary: Mapping[str, Any], base: Mapping[str, Any] | None, bare: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A scenario's figures against its baseline (throughput, p99, servers' CPU per message, what
    its layers add) and each of its processes against a bare server's CPU per call."""
    ratio = p99_ratio = cpu_ratio = added = None
    process_ratio: dict[str, float] = {}
    if base and base["messages_per_s"] and base["latency_ms"]["p99"]:
        ratio = summary["messages_per_s"] / base["messages_per_s"]
        p99_ratio = summary["latency_ms"]["p99"] / base["latency_ms"]["p99"]
        # CPU per message of all servers: steadier than throughput on a shared machine.
        per_message = summary["rps"] / summary["messages_per_s"] if summary["messages_per_s"] else 1.0
        base_per_message = base["rps"] / base["messages_per_s"] if base["messages_per_s"] else 1.0
        base_cpu = _servers_cpu(base["cpu_s_per_1k"]) * base_per_message
        if base_cpu:
            cpu_ratio = _servers_cpu(summary["cpu_s_per_1k"]) * per_message / base_cpu
        # What this scenario's layers add to the servers, per call, over the baseline's.
        added = _servers_cpu(summary["cpu_s_per_1k"]) - _servers_cpu(base["cpu_s_per_1k"])
        base_server = None if bare is None else bare["cpu_s_per_1k"].get("backend")
        if base_server:
            process_ratio = {
                role: seconds / base_server for role, seconds in summary["cpu_s_per_1k"].items() if role != "client"
            }
    return {
        "ratio": ratio,
        "p99_ratio": p99_ratio,
        "servers_cpu_ratio": cpu_ratio,
        "added_vcpu_per_1k_rps": added,
        "process_cpu_ratio": process_ratio,
    }


def _median_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return _median(present) if present else None


def _median_ratios(per_pass: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the passes, the passes themselves kept under ``passes``."""
    roles = sorted({role for one in per_pass for role in one["process_cpu_ratio"]}, key=_role_order)
    merged: dict[str, Any] = {
        name: _median_or_none([one[name] for one in per_pass])
        for name in ("ratio", "p99_ratio", "servers_cpu_ratio", "added_vcpu_per_1k_rps")
    }
    merged["process_cpu_ratio"] = {
        role: value
        for role in roles
        if (value := _median_or_none([one["process_cpu_ratio"].get(role) for one in per_pass])) is not None
    }
    merged["passes"] = list(per_pass)
    return merged


def _pass_value(one: Mapping[str, Any], field: str, role: str) -> float | None:
    value = one.get(field)
    if role:
        value = (value or {}).get(role)
    return value if isinstance(value, (int, float)) else None


def _fmt_spread(values: Sequence[float]) -> str:
    """The range over the passes, when there were several."""
    if len(values) < 2:
        return ""
    return f" ({min(values):.2f}-{max(values):.2f})"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _fmt_target_value(value: float | None, bound: float) -> str:
    """A target's value, with a third decimal when two would print the bound itself (0.799: 0.80x)."""
    if value is not None and round(value, 2) == round(bound, 2) and value != bound:
        return f"{value:.3f}x"
    return _fmt_ratio(value)


def _fmt_errors(errors: Mapping[str, int]) -> str:
    return ", ".join(f"{code} {count}" for code, count in sorted(errors.items())) if errors else "0"


def _servers_cpu(cpu: Mapping[str, float]) -> float:
    return sum(seconds for role, seconds in cpu.items() if role != "client")


def _fmt_us(cpu_s_per_1k: Mapping[str, float]) -> str:
    return " · ".join(f"{role} {seconds * 1000:.0f}" for role, seconds in cpu_s_per_1k.items())


def _fmt_vcpu(cpu_s_per_1k: Mapping[str, float]) -> str:
    return " · ".join(f"{role} {seconds:.2f}" for role, seconds in cpu_s_per_1k.items())


# Istio's published figure for one sidecar (istio.io "Performance and Scalability", 1 KB payloads).
ISTIO_SIDECAR_VCPU_PER_1K_RPS = 0.20


def markdown(report: Mapping[str, Any]) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = [
        f"Measured {report['started_at']} on {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB, "
        f"{machine['os']}; Python {machine['python']}, grpcio {machine['grpcio']}, {machine['h2load']}"
        + (f", {machine['envoy']}" if machine.get("envoy") else "")
        + f". Load average at start {', '.join(str(x) for x in machine['load_average_at_start'])} "
        f"(the machine is shared; ratios are to a baseline measured in the same run).",
        "",
        f"{settings['concurrency']} calls in flight, {settings['warmup_s']:g} s warm-up then "
        f"{settings['duration_s']:g} s measured per client, {settings['passes']} passes (alternating order, "
        f"the bare baseline at both ends of each); rates and CPU are medians over the passes, each ratio the "
        f"median of the passes' own ratios (a pass against the baseline measured in it), with the range over "
        f"passes after each target; whole run {report['wall_s']:.0f} s. "
        f"Unary call {report['payload']['unary']}; streaming {report['payload']['stream']}.",
        "",
    ]
    if report["targets"]:
        lines += ["| target | client | measured | |", "|---|---|---|---|"]
        for target in report["targets"]:
            verdict = {True: "met", False: "**missed**", None: "not measured"}[target["met"]]
            lines.append(
                f"| {target['title']} | {target['client']} | {_fmt_target_value(target['value'], target['bound'])}"
                f"{_fmt_spread(target.get('passes') or [])} | {verdict} |"
            )
        lines.append("")
    for client in ("h2load", "pyclient"):
        rows = [r for r in report["scenarios"] if client in r["clients"]]
        if not rows:
            continue
        lines += [
            f"**{client}**"
            + (" (C, cheap: shows the servers' ceiling)" if client == "h2load" else " (grpc.aio client)"),
            "",
            "| scenario | calls/s | msgs/s | x baseline | p50 ms | p90 ms | p99 ms | p99 x | errors "
            "| servers CPU per msg x | CPU µs per call (per process) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in rows:
            c = row["clients"][client]
            base = "" if c["baseline"] == "bare" else f" (vs {c['baseline']})"
            lat = c["latency_ms"]
            lines.append(
                f"| {row['name']}{base} | {c['rps']:,.0f} | {c['messages_per_s']:,.0f} | {_fmt_ratio(c['ratio'])} "
                f"| {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} | {_fmt_ratio(c['p99_ratio'])} "
                f"| {_fmt_errors(c['errors'])} | {_fmt_ratio(c['servers_cpu_ratio'])} | {_fmt_us(c['cpu_s_per_1k'])} |"
            )
        lines.append("")
    lines += _layer_costs(report)
    lines += ["Scenarios:", ""]
    lines += [f"- `{r['name']}`: {r['summary']} ({r['topology']})" for r in report["scenarios"]]
    return "\n".join(lines) + "\n"


def _layer_costs(report: Mapping[str, Any]) -> list[str]:
    """Each scenario's processes in vCPU per 1,000 calls/s, the unit Istio publishes for its sidecar."""
    rows = [r for r in report["scenarios"] if "h2load" in r["clients"] and r["call"] == "unary"]
    if not rows:
        return []
    lines = [
        "**Each layer in Istio's unit** (h2load; vCPU per 1,000 calls/s = CPU seconds per 1,000 calls; "
        f"Istio publishes ≈{ISTIO_SIDECAR_VCPU_PER_1K_RPS:.2f} for one sidecar)",
        "",
        "| scenario | per process | servers' total | added over its baseline | each process x a bare server |",
        "|---|---|---:|---:|---|",
    ]
    for row in rows:
        c = row["clients"]["h2load"]
        servers = {role: v for role, v in c["cpu_s_per_1k"].items() if role != "client"}
        added = c.get("added_vcpu_per_1k_rps")
        ratios = " · ".join(f"{role} {value:.2f}x" for role, value in (c.get("process_cpu_ratio") or {}).items())
        lines.append(
            f"| {row['name']} | {_fmt_vcpu(servers)} | {sum(servers.values()):.2f} "
            f"| {'n/a' if added is None else f'{added:+.2f}'} | {ratios or 'n/a'} |"
        )
    lines.append("")
    return lines


def write(report: Mapping[str, Any], out_dir: Path, doc: Path | None) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out_dir / "latest.md").write_text(text)
    if doc is not None:
        replace_block(doc, BEGIN, END, text)
    return text
