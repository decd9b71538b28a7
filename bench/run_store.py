"""What the database choice costs per CreateRun: the run store's transaction on SQLite and PostgreSQL.

`python -m bench.run_store [--calls N] [--concurrency C]` opens the agent's write side as the
service wires it (run store, event log, outbox; migrations applied) on the embedded SQLite file
and on a throwaway local PostgreSQL cluster (tools/postgres_local.py, fsync off like the test
clusters, so the figures are the software path, not the disk), then issues N `create` calls from C
concurrent tasks twice:

* first executions: a new request_id each (a look-up of the request id, then the INSERT of the
  run, its CREATED and PROCESSING events and their outbox rows: on PostgreSQL one statement);
* replays: the same request_ids again (the conflicting INSERT finds the run; nothing is written).

It prints calls/s and p50/p99 latency per backend and writes bench/results/run_store.json. The
gRPC and interceptor costs around it are the same on both backends (`make bench` measures those,
idempotency-postgres among them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from runtime.database import Database, open_database, wait_until_reachable
from runtime.events.outbox import Outbox
from runtime.logging import configure_logging
from services.agent.run_store import RunStore
from tools.postgres_local import LocalPostgres

REPO = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _phase(store: RunStore, request_ids: list[str], concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    queue = list(request_ids)

    async def worker() -> None:
        while queue:
            request_id = queue.pop()
            began = time.perf_counter()
            await store.create(question="How long do refunds take?", creator="bench", request_id=request_id)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return {
        "calls_per_s": round(len(request_ids) / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.5) * 1000, 3),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 3),
    }


async def _measure(db: Database, calls: int, concurrency: int) -> dict[str, dict[str, float]]:
    await wait_until_reachable(db)
    store = RunStore(db, Outbox(db))
    await store.create_schema()
    warmup = [f"warmup-{uuid.uuid4().hex}" for _ in range(50)]
    await _phase(store, warmup, concurrency)
    request_ids = [uuid.uuid4().hex for _ in range(calls)]
    first = await _phase(store, request_ids, concurrency)
    replay = await _phase(store, request_ids, concurrency)
    return {"first_execution": first, "replay": replay}


async def run(calls: int, concurrency: int) -> dict[str, Any]:
    results: dict[str, Any] = {"calls": calls, "concurrency": concurrency}
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-run-store-") as work:
        sqlite = await open_database("", sqlite_path=Path(work) / "agent.sqlite3", setting="-")
        try:
            results["sqlite"] = await _measure(sqlite, calls, concurrency)
        finally:
            await sqlite.close()
        cluster = LocalPostgres(Path(work) / "postgres")
        url = await asyncio.to_thread(cluster.start)
        try:
            postgres = await open_database(url, sqlite_path=Path(work) / "unused", setting="-")
            try:
                results["postgresql"] = await _measure(postgres, calls, concurrency)
            finally:
                await postgres.close()
        finally:
            await asyncio.to_thread(cluster.stop)
    return results


def _table(results: dict[str, Any]) -> str:
    lines = [
        f"CreateRun in the run store, {results['calls']} calls from {results['concurrency']} tasks",
        "| backend | phase | calls/s | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|",
    ]
    for backend in ("sqlite", "postgresql"):
        for phase in ("first_execution", "replay"):
            r = results[backend][phase]
            lines.append(
                f"| {backend} | {phase.replace('_', ' ')} | {r['calls_per_s']} | {r['p50_ms']} | {r['p99_ms']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run_store", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "run_store.json")
    args = parser.parse_args()
    configure_logging(level="WARNING", fmt="console")
    results = asyncio.run(run(args.calls, args.concurrency))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(_table(results))


if __name__ == "__main__":
    main()
