"""`python -m bench`: every scenario, each pass, then the report (`make bench`)."""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from bench import h2load, machine, profile, report
from bench.harness import Settings, run_all
from bench.processes import REPO
from bench.scenarios import CLIENTS, SCENARIOS, TARGETS, by_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"default: all ({', '.join(s.name for s in SCENARIOS)})")
    parser.add_argument("--passes", type=int, default=Settings.passes)
    parser.add_argument("--duration", type=float, default=Settings.duration_s, help="measured seconds per client")
    parser.add_argument("--warmup", type=float, default=Settings.warmup_s)
    parser.add_argument("--concurrency", type=int, default=Settings.concurrency)
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS), help="default: both")
    parser.add_argument(
        "--profile", nargs="+", default=[], metavar="ROLE", help="py-spy these processes (gateway, ...)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--work-dir", type=Path, default=REPO / "var" / "bench")
    parser.add_argument(
        "--doc", type=Path, default=REPO / "docs" / "benchmarks.md", help="docs page whose bench block is updated"
    )
    parser.add_argument("--no-doc", action="store_true", help="leave the docs page alone")
    args = parser.parse_args(argv)
    if not h2load.available():
        print("h2load is missing: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    scenarios = [replace(s, clients=tuple(c for c in s.clients if c in args.clients)) for s in by_name(args.scenarios)]
    if args.profile and not profile.available():
        print("py-spy is missing: pip install py-spy", file=sys.stderr)
        return 2
    settings = Settings(
        concurrency=args.concurrency,
        warmup_s=args.warmup,
        duration_s=args.duration,
        passes=args.passes,
        profile_roles=tuple(args.profile),
        profile_dir=args.out / "profiles",
    )
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    about = machine.describe()
    began = time.monotonic()
    results = run_all(scenarios, settings, args.work_dir, progress=lambda line: print(line, flush=True))
    built = report.build(
        scenarios,
        results,
        TARGETS,
        machine=about,
        settings={k: v for k, v in asdict(settings).items() if not k.startswith("profile")},
        wall_s=time.monotonic() - began,
    )
    built["started_at"] = started_at
    text = report.write(built, args.out, None if args.no_doc else args.doc)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
