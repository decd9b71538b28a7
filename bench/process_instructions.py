"""`python -m bench.process_instructions`: one process of a scenario, its instructions per call.

`bench.instructions` counts the chain's own work inside one call; this counts everything one
process of a running scenario executes per call, grpc core and every thread included: the
scenario is started as `make bench` starts it, with the measured process (``ROLE``) under
valgrind's callgrind; after a warm-up h2load run its counters are zeroed, a fixed number of calls
is sent, and the counters are dumped (``callgrind_control``). Two runs agree within about 1%,
where the CPU figures of a `make bench` pass move by a third, so a change of a few per cent in
what the gateway does per call shows here first.

Default: the bare server, the full chain, a gateway hop and the grpc.aio floor under it, each
against the bare server's count. An instruction is not a microsecond (cache misses differ), so
the ratio is the work done, not the time it takes; `make bench` measures the time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import h2load
from bench.callgrind import summary_of
from bench.payload import CALLS, grpc_frame_bytes
from bench.processes import REPO, Child, ProcessGroup
from bench.scenarios import by_name

RESULT = REPO / "bench" / "results" / "process_instructions.json"
# (scenario, the process measured): the first is the baseline the others are divided by.
DEFAULT = (("bare", "backend"), ("chain", "backend"), ("gateway", "gateway"), ("gateway-floor", "gateway"))


@dataclass(frozen=True)
class Counted:
    scenario: str
    role: str
    calls: int
    instructions: int

    @property
    def per_call(self) -> float:
        return self.instructions / self.calls


class _UnderCallgrind(ProcessGroup):
    """A process group that starts one role under callgrind (and gives it time to start there)."""

    def __init__(self, work_dir: Path, role: str) -> None:
        super().__init__(work_dir)
        self.role = role
        self.out = work_dir / "callgrind.out"
        self.measured: Child | None = None

    def start(self, role: str, argv: Sequence[str], **options: Any) -> Child:
        if role != self.role:
            return super().start(role, argv, **options)
        wrapped = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}", *argv]
        self.measured = super().start(role, wrapped, **{**options, "timeout_s": 900})
        return self.measured


def _calls(options: h2load.H2loadOptions, body: Path, calls: int) -> int:
    done = h2load.fixed(options, body, calls=calls, timeout_s=1800)
    if done["failed"]:
        raise RuntimeError(f"{int(done['failed'])} of {calls} calls failed")
    return int(done["succeeded"])


def count(scenario_name: str, role: str, calls: int, work_dir: Path) -> Counted:
    """Instructions per call of ``role`` in ``scenario_name``, over ``calls`` unary calls."""
    [scenario] = [s for s in by_name([scenario_name]) if s.name == scenario_name]
    work_dir.mkdir(parents=True, exist_ok=True)
    group = _UnderCallgrind(work_dir, role)
    try:
        endpoint = scenario.topology.start(group)
        measured = group.measured
        if measured is None:
            raise ValueError(f"{scenario_name} has no {role!r} process")
        body = work_dir / "body.bin"
        body.write_bytes(grpc_frame_bytes(CALLS["unary"].request))
        options = h2load.H2loadOptions(
            url=endpoint.url,
            call=CALLS["unary"],
            concurrency=4,
            warmup_s=0,
            duration_s=0,
            connections=1,
            headers=(*scenario.headers, *endpoint.headers),
        )
        _calls(options, body, max(100, calls // 10))  # warm-up: caches, lazy set-up
        pid = str(measured.popen.pid)
        subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True, timeout=120)
        done = _calls(options, body, calls)
        subprocess.run(["callgrind_control", "--dump", pid], check=True, capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while not (dumps := sorted(work_dir.glob("callgrind.out.*"))) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not dumps:
            raise RuntimeError(f"callgrind wrote no dump for {scenario_name}/{role}")
        time.sleep(1)  # the dump is written by the measured process itself; let it finish
        return Counted(scenario_name, role, done, summary_of(dumps[-1]))
    finally:
        group.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.process_instructions", description=__doc__)
    parser.add_argument(
        "pairs",
        nargs="*",
        metavar="SCENARIO:ROLE",
        help="what to count, the first being the baseline (default: " + " ".join(f"{s}:{r}" for s, r in DEFAULT) + ")",
    )
    parser.add_argument("--calls", type=int, default=2000, help="measured calls each (default 2000)")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"JSON result (default {RESULT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    pairs = [tuple(p.split(":", 1)) for p in args.pairs] if args.pairs else list(DEFAULT)
    if any(len(pair) != 2 or not all(pair) for pair in pairs) or args.calls <= 0:
        print("give SCENARIO:ROLE pairs (e.g. gateway:gateway) and a positive --calls", file=sys.stderr)
        return 2
    known = {s.name for s in by_name(None)}
    unknown = sorted({scenario for scenario, _ in pairs} - known)
    if unknown:
        print(f"unknown scenarios {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: apt-get install -y valgrind", file=sys.stderr)
            return 2
    if not h2load.available():
        print("h2load is missing: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    counted = []
    with tempfile.TemporaryDirectory(prefix="agentmesh-process-instructions-") as scratch:
        for index, (scenario, role) in enumerate(pairs):
            result = count(scenario, role, args.calls, Path(scratch) / str(index))
            counted.append(result)
            print(f"{scenario:16s} {role:8s} {result.per_call:11,.0f} instructions per call", flush=True)
    base = counted[0].per_call
    print(f"against {counted[0].scenario} ({counted[0].role}):")
    for result in counted[1:]:
        print(f"  {result.scenario:16s} {result.role:8s} {result.per_call / base:5.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**vars(r), "per_call": r.per_call, "ratio": r.per_call / base} for r in counted]
    args.out.write_text(json.dumps({"calls": args.calls, "counted": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
