"""Run scenarios: start each topology, drive it with each client, account CPU per process.

Passes alternate direction (forward, then reversed, ...), so slow drift in the machine's load
weighs on every scenario alike rather than on the ones that happen to run last.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import h2load, profile
from bench.payload import CALLS
from bench.processes import ProcessGroup, cpu_delta, python_argv, python_env
from bench.scenarios import BASELINE, Scenario
from bench.topology import Endpoint


@dataclass(frozen=True)
class Settings:
    concurrency: int = 32
    warmup_s: float = 0.5
    duration_s: float = 1.5
    # Three, so a median is a middle value and not the mean of two.
    passes: int = 3
    h2load_connections: int = 2
    # Roles ("gateway", "backend", ...) to sample with py-spy in the first pass, and where to write.
    profile_roles: tuple[str, ...] = ()
    profile_dir: Path | None = None


Measurement = dict[str, Any]
Progress = Callable[[str], None]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _per_thousand(cpu: dict[str, float], calls: int) -> dict[str, float]:
    return {role: seconds / calls * 1000 if calls else 0.0 for role, seconds in cpu.items()}


def measure_h2load(
    scenario: Scenario,
    endpoint: Endpoint,
    group: ProcessGroup,
    settings: Settings,
    work_dir: Path,
    *,
    profile_this: bool = False,
) -> Measurement:
    options = h2load.H2loadOptions(
        url=endpoint.url,
        call=CALLS[scenario.call],
        concurrency=settings.concurrency,
        warmup_s=settings.warmup_s,
        duration_s=settings.duration_s,
        connections=scenario.h2load_connections or settings.h2load_connections,
        headers=(*scenario.headers, *endpoint.headers),
    )
    marks: dict[str, Any] = {}
    profiled = [c for c in group.children if c.role in settings.profile_roles] if profile_this else []
    samplers: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def on_measuring() -> None:
        for child in profiled:
            raw = work_dir / f"profile-{child.role}.raw"
            samplers.append((child.role, profile.start(child.popen.pid, settings.duration_s, raw), raw))
        marks["servers"] = group.cpu()
        marks["client"] = _children_cpu()

    result = h2load.run(options, work_dir, on_measuring)
    if samplers and settings.profile_dir is not None:
        settings.profile_dir.mkdir(parents=True, exist_ok=True)
        for role, sampler, raw in samplers:
            profile.finish(sampler, raw, settings.profile_dir / f"{scenario.name}-{role}.txt")
    servers = cpu_delta(marks["servers"], group.cpu())
    client = _children_cpu() - marks["client"]
    group.check_alive()
    return {**result, "cpu_s_per_1k": _per_thousand({**servers, "client": client}, result["calls"])}


def measure_pyclient(scenario: Scenario, endpoint: Endpoint, group: ProcessGroup, settings: Settings) -> Measurement:
    args = [
        "--target",
        endpoint.address,
        "--call",
        scenario.call,
        "--concurrency",
        str(settings.concurrency),
        "--warmup",
        str(settings.warmup_s),
        "--duration",
        str(settings.duration_s),
    ]
    for name, value in (*scenario.headers, *endpoint.headers):
        args += ["--header", f"{name}={value}"]
    if scenario.client_breaker:
        args += ["--breaker"]
    if scenario.unique_header:
        args += ["--unique-header", scenario.unique_header]
    tls = endpoint.tls
    if tls is not None:
        args += ["--ca", str(tls.ca)]
        args += ["--cert", str(tls.cert), "--key", str(tls.key)] if tls.cert and tls.key else []
        args += ["--server-name", tls.server_name] if tls.server_name else []
    client_before = _children_cpu()
    process = subprocess.Popen(
        python_argv("bench.pyclient", *args),
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    # A stuck client must not hang the run: past its time it is killed, and its pipe then ends.
    watchdog = threading.Timer(settings.warmup_s + settings.duration_s + 60, process.kill)
    watchdog.start()
    try:
        marker = process.stdout.readline().strip()
        if marker != "measuring":
            raise RuntimeError(f"pyclient did not start measuring ({marker!r}):\n{process.communicate()[1]}")
        servers_before = group.cpu()
        line = process.stdout.readline()
        servers = cpu_delta(servers_before, group.cpu())
        process.wait(timeout=30)
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0 or not line.strip():
        raise RuntimeError(
            f"pyclient failed ({process.returncode}):\n{process.stderr.read() if process.stderr else ''}"
        )
    result: Measurement = json.loads(line)
    # The client's whole life (import, warm-up) would overstate it; it reports its own window.
    client = result.pop("cpu_s", _children_cpu() - client_before)
    group.check_alive()
    return {**result, "cpu_s_per_1k": _per_thousand({**servers, "client": client}, result["calls"])}


def run_scenario(
    scenario: Scenario, settings: Settings, work_dir: Path, *, profile_this: bool = False
) -> dict[str, Measurement]:
    """One pass of one scenario: start its topology, measure with each client, stop it."""
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    group = ProcessGroup(work_dir)
    results: dict[str, Measurement] = {}
    try:
        endpoint = scenario.topology.start(group)
        for client in scenario.clients:
            if client == "h2load":
                results[client] = measure_h2load(
                    scenario, endpoint, group, settings, work_dir, profile_this=profile_this
                )
            else:
                results[client] = measure_pyclient(scenario, endpoint, group, settings)
    finally:
        group.stop()
    return results


def run_all(
    scenarios: Sequence[Scenario], settings: Settings, work_dir: Path, progress: Progress = print
) -> dict[str, dict[str, list[Measurement]]]:
    """Every scenario, `settings.passes` times; returns scenario → client → its measurements.

    The bare baseline, which every ratio divides by, is measured at both ends of each pass, so a
    lucky or unlucky moment weighs less on all of them.
    """
    results: dict[str, dict[str, list[Measurement]]] = {s.name: {c: [] for c in s.clients} for s in scenarios}
    bare = [s for s in scenarios if s.name == BASELINE]
    others = [s for s in scenarios if s.name != BASELINE]
    for number in range(settings.passes):
        middle = others if number % 2 == 0 else list(reversed(others))
        for scenario in [*bare, *middle, *bare] if others else bare:
            started = time.monotonic()
            measured = run_scenario(scenario, settings, work_dir / scenario.name, profile_this=number == 0)
            for client, measurement in measured.items():
                results[scenario.name][client].append(measurement)
            summary = ", ".join(
                f"{client} {m['rps']:.0f}/s p99 {m['latency_ms']['p99']:.1f} ms"
                + (f" errors {m['errors']}" if m["errors"] else "")
                for client, m in measured.items()
            )
            progress(
                f"pass {number + 1}/{settings.passes} {scenario.name:<24} {summary} ({time.monotonic() - started:.1f}s)"
            )
    return results
