"""`python -m bench.instructions`: the chain's own work per call, counted in machine instructions.

Timings on a shared machine move by a third from one run to the next; an instruction count does
not (two runs agree within a fraction of a per cent). This runs the full server chain, as
`bench.stacks` builds it for the "chain" scenario, inside one real grpc.aio call, under valgrind's
callgrind, and counts what each variant of it costs per call: the chain, the chain without each
concern in turn (so that concern's own work is the difference), and the handler alone.

How: one process compiles every variant and drives each through ``--calls`` calls on the same
servicer context, each call in a task of its own (as grpc.aio runs calls), so each reads the
call's metadata once, as a real call does. ``time.sleep(0)`` marks where a measured phase
starts and ends, and callgrind dumps its counters there (``--dump-before=time_sleep``), so every
phase's count is its own. Reported per call, with the handler-alone variant (the harness, the
task, the handler) subtracted.

An instruction is not a microsecond: a call outside this tight loop finds less in the caches, so
the same work costs more time in a real server. The counts compare variants and code versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.callgrind import summary_of
from bench.processes import REPO, python_env

HANDLER_ALONE = "handler alone"
METADATA = "reading the call's metadata"
FULL = "full chain"
RESULT = REPO / "bench" / "results" / "instructions.json"


def variant_names(concerns: Sequence[str]) -> list[str]:
    """The variants in the order they are measured: handler alone, the handler reading the call's
    metadata (what grpc.aio charges for ``invocation_metadata()``), full chain, one without each."""
    return [HANDLER_ALONE, METADATA, FULL, *(f"without {name}" for name in concerns)]


def per_call(phase_counts: Sequence[int], names: Sequence[str], calls: int) -> dict[str, float]:
    """Instructions per call of each variant, less the handler alone's; ``phase_counts`` in measured order."""
    if len(phase_counts) != len(names):
        raise ValueError(f"expected {len(names)} measured phases, callgrind dumped {len(phase_counts)}")
    alone = phase_counts[0] / calls
    return {name: count / calls - alone for name, count in zip(names, phase_counts, strict=True)}


def own_work(costs: dict[str, float]) -> dict[str, float]:
    """Each concern's own work: the full chain less the chain without it."""
    full = costs[FULL]
    return {name[len("without ") :]: full - cost for name, cost in costs.items() if name.startswith("without ")}


def measured_phases(dump_files: Sequence[Path]) -> list[int]:
    """The counts of the measured phases: callgrind's parts 2, 4, 6, ... (part 1 runs up to the first mark)."""

    def part(path: Path) -> int:
        return int(path.name.rsplit(".", 1)[1])

    return [summary_of(path) for path in sorted(dump_files, key=part) if part(path) % 2 == 0]


# --- the measured process (run under callgrind) -------------------------------------------


def mark() -> None:
    """Where callgrind dumps its counters (``--dump-before=time_sleep``): a phase boundary."""
    time.sleep(0)


def _measure_process(calls: int, warmup: int) -> list[str]:
    from runtime.logging import configure_logging  # noqa: PLC0415

    # JSON access lines, as the services write them, to /dev/null: the work, not the disk.
    stderr = sys.stderr
    with Path(os.devnull).open("w") as devnull:
        sys.stderr = devnull
        try:
            configure_logging(level="INFO", fmt="json")
        finally:
            sys.stderr = stderr
        return asyncio.run(_measure(calls, warmup))


async def _measure(calls: int, warmup: int) -> list[str]:
    import grpc  # noqa: PLC0415 - the driver itself needs none of this
    import grpc.aio  # noqa: PLC0415

    from bench.credentials import issue  # noqa: PLC0415
    from bench.payload import REQUEST, RESPONSE, SERVICE, UNARY_METHOD  # noqa: PLC0415
    from bench.stacks import StackOptions, build_interceptors  # noqa: PLC0415
    from interceptors.layer import ServerChain, compile_handler  # noqa: PLC0415

    work_dir = Path(tempfile.mkdtemp(prefix="agentmesh-instructions-"))
    credentials = issue(work_dir)
    stack = await build_interceptors(
        ["chain"], StackOptions(data_dir=str(work_dir), jwks_file=str(credentials.jwks_file))
    )
    [chain] = stack.interceptors
    assert isinstance(chain, ServerChain)
    concerns = list(chain.concerns)

    async def handler(request: Any, context: Any) -> Any:
        return RESPONSE

    async def reads_metadata(request: Any, context: Any) -> Any:
        context.invocation_metadata()
        return RESPONSE

    decode, encode = type(REQUEST).FromString, type(RESPONSE).SerializeToString
    base = grpc.unary_unary_rpc_method_handler(handler, decode, encode)
    compiled = [
        base,
        grpc.unary_unary_rpc_method_handler(reads_metadata, decode, encode),
        compile_handler(UNARY_METHOD, base, concerns),
        *(compile_handler(UNARY_METHOD, base, [c for c in concerns if c is not dropped]) for dropped in concerns),
    ]
    raw = REQUEST.SerializeToString()

    async def drive(request: Any, context: Any) -> bytes:
        outside = contextvars.copy_context()
        for handled in compiled:
            behavior: Any = handled.unary_unary
            message = raw if handled.request_deserializer is None else REQUEST
            for _ in range(warmup):
                await asyncio.create_task(behavior(message, context), context=outside.copy())
            mark()  # the measured phase starts
            for _ in range(calls):
                await asyncio.create_task(behavior(message, context), context=outside.copy())
            mark()  # it ends
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"CreateRun": grpc.unary_unary_rpc_method_handler(drive)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            # The headers a bench client sends: its token (h2load's other headers are transport ones).
            await channel.unary_unary(UNARY_METHOD, request_serializer=None, response_deserializer=None)(
                b"", timeout=3600, metadata=[credentials.header]
            )
    finally:
        await server.stop(None)
        for hook in stack.on_stopped:
            await hook()
    return [type(concern).__name__ for concern in concerns]


# --- the driver ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="measured calls per variant (default 3000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured calls before each (default 200)")
    parser.add_argument("--out", type=Path, default=RESULT, help=f"JSON result (default {RESULT.relative_to(REPO)})")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the process under callgrind
    args = parser.parse_args(argv)
    if args.calls <= 0 or args.warmup < 0:
        print("--calls must be positive and --warmup not negative", file=sys.stderr)
        return 2
    if args.measure:
        print(json.dumps(_measure_process(args.calls, args.warmup)))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is missing: apt-get install -y valgrind", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="agentmesh-callgrind-") as scratch:
        # Byte-compiled once outside valgrind, so what it counts is the calls, not the imports.
        env = python_env({"PYTHONPYCACHEPREFIX": str(Path(scratch) / "pycache")})
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        measure = [sys.executable, "-m", "bench.instructions", "--measure"]
        subprocess.run(
            [*measure, "--calls", "1", "--warmup", "0"], cwd=REPO, env=env, check=True, timeout=300, capture_output=True
        )
        out = Path(scratch) / "callgrind.out"
        done = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--dump-before=time_sleep",
                f"--callgrind-out-file={out}",
                *measure,
                "--calls",
                str(args.calls),
                "--warmup",
                str(args.warmup),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return 1
        concerns: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
        names = variant_names(concerns)
        costs = per_call(measured_phases(list(Path(scratch).glob("callgrind.out.*"))), names, args.calls)
    own = own_work(costs)
    print(f"instructions per call, {args.calls} calls per variant (the handler alone subtracted):")
    print(f"  {FULL:32s} {costs[FULL]:9,.0f}")
    for name, cost in own.items():
        print(f"  {name:32s} {cost:9,.0f}")
    rest = costs[FULL] - sum(own.values())
    print(f"  {'shared by several concerns':32s} {rest:9,.0f}  (of which {METADATA}: {costs[METADATA]:,.0f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"calls": args.calls, "per_call": costs, "own_work": own, "shared": rest}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
