"""`python -m bench.paired A B`: two scenarios at once, at one fixed call rate, a process's CPU per call compared.

On a shared machine a `make bench` ratio moves by up to a third from one pass to the next, which
hides any change worth a few per cent. Here both scenarios run at the same time, each driven by its
own h2load at the same fixed rate (``--rps``), so whatever slows the machine slows both, and at equal
rates both batch alike; what is compared is one process's CPU per call (``--role``, or all servers),
B against A, in each round, with the median and range over the rounds. Run A against itself first
to see the instrument's spread (on the 2-core machine here: within ±4% with 8 s rounds).

Typical uses: ``gateway gateway-floor --role gateway`` (what the gateway adds over the least
grpc.aio forwarder), ``bare chain --role backend``. Only h2load scenarios with a unary call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import h2load
from bench.payload import CALLS, grpc_frame_bytes
from bench.processes import REPO, ProcessGroup, cpu_delta
from bench.scenarios import Scenario, by_name
from bench.topology import Endpoint

SERVERS = "servers"


@dataclass(frozen=True)
class Side:
    scenario: Scenario
    group: ProcessGroup
    endpoint: Endpoint
    body: Path


@dataclass(frozen=True)
class Round:
    a_us: float  # CPU µs per call of the role, scenario A
    b_us: float

    @property
    def ratio(self) -> float:
        return self.b_us / self.a_us if self.a_us else float("nan")


def _cpu_us_per_call(before: dict[str, float], after: dict[str, float], calls: int, role: str) -> float:
    delta = cpu_delta(before, after)
    seconds = sum(delta.values()) if role == SERVERS else delta[role]
    return seconds / calls * 1e6 if calls else 0.0


def _start(scenario: Scenario, work_dir: Path) -> Side:
    work_dir.mkdir(parents=True, exist_ok=True)
    group = ProcessGroup(work_dir)
    try:
        endpoint = scenario.topology.start(group)
    except BaseException:
        group.stop()
        raise
    body = work_dir / "h2load-body.bin"
    body.write_bytes(grpc_frame_bytes(CALLS[scenario.call].request))
    return Side(scenario, group, endpoint, body)


def _options(side: Side, seconds: float) -> h2load.H2loadOptions:
    return h2load.H2loadOptions(
        url=side.endpoint.url,
        call=CALLS[side.scenario.call],
        concurrency=32,
        warmup_s=0,
        duration_s=seconds,
        headers=(*side.scenario.headers, *side.endpoint.headers),
    )


def one_round(a: Side, b: Side, *, rate: int, seconds: float, role: str) -> Round:
    """Both sides driven at once at ``rate`` calls/s; each side's role's CPU per call."""
    before = {"a": a.group.cpu(), "b": b.group.cpu()}
    running = {
        name: h2load.start_paced(_options(side, seconds), side.body, rate=rate, seconds=seconds)
        for name, side in (("a", a), ("b", b))
    }
    done = {name: h2load.finish_paced(process, seconds * 5 + 30) for name, process in running.items()}
    after = {"a": a.group.cpu(), "b": b.group.cpu()}
    for name, side in (("a", a), ("b", b)):
        side.group.check_alive()
        if done[name]["failed"]:
            raise RuntimeError(f"{side.scenario.name}: {int(done[name]['failed'])} calls failed")
    return Round(
        _cpu_us_per_call(before["a"], after["a"], int(done["a"]["done"]), role),
        _cpu_us_per_call(before["b"], after["b"], int(done["b"]["done"]), role),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("a", help="scenario A (the reference)")
    parser.add_argument("b", help="scenario B")
    parser.add_argument(
        "--role", default=SERVERS, help="the process compared (gateway, backend, ...); default: all servers"
    )
    parser.add_argument("--rate", type=int, default=800, help="calls/s driven into each side (default 800)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of a round (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after one warm-up round (default 3)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench-paired")
    args = parser.parse_args(argv)
    if not h2load.available():
        print("h2load is missing: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    known = {s.name: s for s in by_name(None)}
    for name in (args.a, args.b):
        scenario = known.get(name)
        if scenario is None or "h2load" not in scenario.clients or scenario.call != "unary":
            usable = sorted(n for n, s in known.items() if "h2load" in s.clients and s.call == "unary")
            print(f"scenario {name!r} cannot be paired; use one of {usable}", file=sys.stderr)
            return 2
    if args.rate <= 0 or args.seconds <= 0 or args.rounds <= 0:
        print("--rate, --seconds and --rounds must be positive", file=sys.stderr)
        return 2
    a = _start(known[args.a], args.work_dir / "a")
    try:
        b = _start(known[args.b], args.work_dir / "b")
        try:
            for side in (a, b):
                roles = sorted(side.group.cpu())
                if args.role != SERVERS and args.role not in roles:
                    print(
                        f"--role {args.role}: {side.scenario.name} has no such process; it has {', '.join(roles)}",
                        file=sys.stderr,
                    )
                    return 2
            time.sleep(1)
            one_round(a, b, rate=args.rate, seconds=min(args.seconds, 2), role=args.role)  # warm-up
            rounds = []
            for number in range(1, args.rounds + 1):
                measured = one_round(a, b, rate=args.rate, seconds=args.seconds, role=args.role)
                rounds.append(measured)
                print(
                    f"round {number}: {args.a} {measured.a_us:.0f} µs, {args.b} {measured.b_us:.0f} µs "
                    f"per call ({args.role}); B/A {measured.ratio:.3f}",
                    flush=True,
                )
        finally:
            b.group.stop()
    finally:
        a.group.stop()
    ratios = [r.ratio for r in rounds]
    print(
        f"{args.b} / {args.a}, {args.role} CPU per call at {args.rate} calls/s each: "
        f"median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
