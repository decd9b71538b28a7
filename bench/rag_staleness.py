"""How stale a RAG replica's searches are behind a commit made through another replica.

`python -m bench.rag_staleness [--rounds N] [--replicas R] [--corpus D]` starts a throwaway
PostgreSQL cluster (tools/postgres_local.py) and R rag servers on it (own data dirs, BM25, the
follower's safety poll at 60 s so only LISTEN/NOTIFY can wake them), ingests D background documents
(every replica rebuilds its snapshot over the whole corpus, so this is what staleness grows with),
then per round ingests one new document through replica ``i`` and searches every other replica
every 5 ms until it finds it. Two figures:

* visible: from the Ingest response on replica ``i`` to the first Search on replica ``j`` that finds
  the document (what a client switching replicas sees; includes the 5 ms polling granularity);
* staleness: the servers' own `agentmesh_rag_snapshot_staleness_seconds` (commit to live snapshot),
  read from each replica's /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from runtime.bootstrap import ManagedServer
from runtime.logging import configure_logging
from runtime.ports import free_port
from services.rag.config import RagSettings
from services.rag.server import build
from tools.postgres_local import LocalPostgres


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _histogram(metrics_port: int) -> tuple[float, float, dict[str, float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    total = count = 0.0
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("agentmesh_rag_snapshot_staleness_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("agentmesh_rag_snapshot_staleness_seconds_count"):
            count = float(line.split()[-1])
        elif line.startswith("agentmesh_rag_snapshot_staleness_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[bound] = float(line.split()[-1])
    return total, count, buckets


def _background(count: int) -> list[document_pb2.Document]:
    words = [
        "retry",
        "budget",
        "breaker",
        "canary",
        "mesh",
        "sidecar",
        "route",
        "weight",
        "token",
        "quota",
        "replica",
        "snapshot",
    ]
    return [
        document_pb2.Document(
            document_id=f"corpus/{i}",
            text=" ".join(f"{words[(i * 7 + j) % len(words)]}{(i + j) % 97}" for j in range(120)),
        )
        for i in range(count)
    ]


async def measure(rounds: int, replica_count: int, corpus: int) -> None:
    with tempfile.TemporaryDirectory(prefix="rag-staleness-") as tmp:
        cluster = LocalPostgres(Path(tmp) / "postgres")
        url = await asyncio.to_thread(cluster.start)
        servers: list[ManagedServer] = []
        metrics_ports = [free_port() for _ in range(replica_count)]
        try:
            for i in range(replica_count):
                settings = RagSettings(
                    port=0,
                    data_dir=Path(tmp) / f"replica-{i}",
                    database_url=url,
                    follow_poll_s=60,
                    metrics_port=metrics_ports[i],
                    drain_delay_s=0,
                    grace_period_s=1,
                )
                server = ManagedServer(await build(settings))
                await server.start()
                servers.append(server)
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") for s in servers]
            stubs = [rag_grpc.RagServiceStub(c) for c in channels]
            background = _background(corpus)
            for start in range(0, len(background), 100):
                batch = background[start : start + 100]
                await stubs[0].IngestDocuments(rag_pb.IngestDocumentsRequest(documents=batch), timeout=60)
            before = [_histogram(port) for port in metrics_ports]
            visible: list[float] = []
            for n in range(rounds):
                source = n % replica_count
                word = f"marker{n}x"
                document = document_pb2.Document(document_id=f"bench/{n}", text=f"Round {n} writes {word} once.")
                await stubs[source].IngestDocuments(rag_pb.IngestDocumentsRequest(documents=[document]), timeout=10)
                committed = time.perf_counter()
                for target in range(replica_count):
                    if target == source:
                        continue
                    while True:
                        found = await stubs[target].Search(rag_pb.SearchRequest(query=word, top_k=1), timeout=5)
                        if found.results:
                            visible.append(time.perf_counter() - committed)
                            break
                        await asyncio.sleep(0.005)
            for channel in channels:
                await channel.close(None)
            print(
                f"{rounds} rounds, {replica_count} replicas on one PostgreSQL 15, {corpus} background documents"
                " (BM25, safety poll 60 s)"
            )
            print(
                "visible on another replica after the Ingest response: "
                f"p50 {_percentile(visible, 0.5) * 1000:.1f} ms, p95 {_percentile(visible, 0.95) * 1000:.1f} ms, "
                f"max {max(visible) * 1000:.1f} ms, mean {statistics.mean(visible) * 1000:.1f} ms"
            )
            for i, port in enumerate(metrics_ports):
                total, count, buckets = _histogram(port)
                # The rounds only, not the background load.
                total -= before[i][0]
                count -= before[i][1]
                within = {
                    le: n - before[i][2].get(le, 0.0)
                    for le, n in buckets.items()
                    if le in ("0.05", "0.1", "0.25", "2.0")
                }
                print(
                    f"replica {i}: agentmesh_rag_snapshot_staleness_seconds count {count:.0f},"
                    f" mean {total / max(count, 1) * 1000:.1f} ms, cumulative buckets {within}"
                )
        finally:
            for server in servers:
                await server.stop()
            await asyncio.to_thread(cluster.stop, mode="immediate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--corpus", type=int, default=0)
    args = parser.parse_args()
    configure_logging(level="WARNING", fmt="console")
    asyncio.run(measure(args.rounds, args.replicas, args.corpus))


if __name__ == "__main__":
    main()
