"""What a RAG change costs as the corpus grows: two real replicas on one PostgreSQL.

`python -m bench.rag_growth [--sizes 1000,10000,100000] [--probes 20] [--searches 200]` starts a
throwaway PostgreSQL cluster (tools/postgres_local.py) and two ``python -m services.rag``
processes on it, each with its own data dir (BM25, dense off: the defaults). Documents of about
110 words (a fixed vocabulary with a Zipf-like spread, so BM25 has common and rare terms alike)
are ingested through replica 0 in batches of 100, one batch at a time, up to each size in turn.
At each size:

* **batch**: the median IngestDocuments latency of the last three batches, which take the corpus
  to the size;
* **found on the other replica**: ``--probes`` times, one new document with a word of its own is
  ingested through replica 0, then replica 1 is searched for that word every 5 ms until it is
  found; from the Ingest response to that Search (p50, p95);
* **Search**: ``--searches`` queries of two vocabulary words, top 5, one at a time, alternating
  between the replicas (p50, p99);
* **RSS** of each replica process;
* **start-up**: replica 1 is stopped (SIGTERM) and started again on its data dir; from the start to
  SERVING on the existing corpus;
* **loaded**: the time spent ingesting so far (the batches only, not the probes).

Loading stops early, and the report says so, once it has taken ``--budget`` seconds: on a
corpus where each change costs seconds, 100,000 documents would take hours. Results:
bench/results/rag_growth.{json,md}, and the block in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from agentmesh.rag.v1 import document_pb2
from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from bench import outputs
from bench.cli import OneLineParser, positive_int
from bench.outputs import Bound
from bench.processes import REPO, Child, ProcessGroup, start_service
from bench.pyclient import percentile
from tools.postgres_local import LocalPostgres, installed

BEGIN = "<!-- rag-growth:begin (written by `make bench`) -->"
END = "<!-- rag-growth:end -->"

BATCH = 100
BATCHES_TIMED = 3
INGEST_TIMEOUT_S = 120.0
SEARCH_TIMEOUT_S = 10.0
# A probe not found on the other replica within this long counts as this long, and is reported.
FOUND_WITHIN_S = 30.0
POLL_S = 0.005
WORDS_PER_DOCUMENT = (100, 120)


class Corpus:
    """Deterministic documents of about 110 words from a 5,000-word vocabulary, Zipf-like."""

    def __init__(self, seed: int = 20) -> None:
        rng = random.Random(seed)
        # Syllables without q or z, so a probe's marker ("zq...") can never be a vocabulary word.
        syllables = [c + v for c in "bcdfghjklmnprstvw" for v in "aeiou"]
        words: set[str] = set()
        while len(words) < 5000:
            words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
        self.vocabulary = sorted(words)
        rng.shuffle(self.vocabulary)
        self._weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(self.vocabulary))))
        self._rng = rng
        self.count = 0

    def _words(self, n: int) -> list[str]:
        return self._rng.choices(self.vocabulary, cum_weights=self._weights, k=n)

    def _text(self, extra: str = "") -> str:
        words = self._words(self._rng.randint(*WORDS_PER_DOCUMENT))
        if extra:
            words[len(words) // 2] = extra
        sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
        return " ".join(sentences)

    def batch(self, size: int = BATCH) -> list[document_pb2.Document]:
        documents = [
            document_pb2.Document(document_id=f"corpus/{self.count + i}", text=self._text()) for i in range(size)
        ]
        self.count += size
        return documents

    def probe(self, n: int) -> tuple[document_pb2.Document, str]:
        """A document holding a word no other document has, and that word."""
        marker = "zq" + "".join("abcdefghij"[int(d)] for d in str(n)) + "zq"
        self.count += 1
        return document_pb2.Document(document_id=f"probe/{n}", text=self._text(marker)), marker

    def queries(self, n: int) -> Iterator[str]:
        # Words past the 50 commonest, as a person's query would be.
        for _ in range(n):
            yield " ".join(self._rng.sample(self.vocabulary[50:2000], 2))


@dataclass
class Checkpoint:
    documents: int
    load_average: list[float]
    batch_s: float
    found_p50_ms: float
    found_p95_ms: float
    found_late: int
    search_p50_ms: float
    search_p99_ms: float
    rss_mb: list[float]
    startup_s: float
    loaded_s: float
    stopped_early: bool


def _rss_mb(child: Child) -> float:
    processes = [child.process, *child.process.children(recursive=True)]
    return round(sum(p.memory_info().rss for p in processes) / 2**20, 1)


class _Replicas:
    """The two rag processes and a stub for each."""

    def __init__(self, group: ProcessGroup, work: Path, database_url: str) -> None:
        self.group = group
        self.work = work
        self.database_url = database_url
        self.children: list[Child] = []
        self.channels: list[grpc.aio.Channel] = []
        self.stubs: list[rag_grpc.RagServiceAsyncStub] = []

    async def start(self, n: int) -> float:
        """Start replica ``n`` (again, on its data dir); returns the seconds it took to be SERVING."""
        began = time.perf_counter()
        child = await start_service(
            self.group,
            "services.rag",
            "RAG",
            f"rag-{n}",
            self.work,
            DATABASE_URL=self.database_url,
            DRAIN_DELAY_S="0",
            GRACE_PERIOD_S="5",
        )
        took = time.perf_counter() - began
        channel = grpc.aio.insecure_channel(child.address)
        stub = rag_grpc.RagServiceStub(channel)
        if n < len(self.children):
            await self.channels[n].close(None)
            self.children[n], self.channels[n], self.stubs[n] = child, channel, stub
        else:
            self.children.append(child)
            self.channels.append(channel)
            self.stubs.append(stub)
        return took

    async def restart(self, n: int) -> float:
        old = self.children[n]
        await asyncio.to_thread(old.stop, 120)
        self.group.children.remove(old)
        return await self.start(n)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)


async def _ingest(stub: rag_grpc.RagServiceAsyncStub, documents: list[document_pb2.Document]) -> float:
    began = time.perf_counter()
    await stub.IngestDocuments(rag_pb.IngestDocumentsRequest(documents=documents), timeout=INGEST_TIMEOUT_S)
    return time.perf_counter() - began


async def _found_after(replicas: _Replicas, corpus: Corpus, n: int) -> float:
    document, marker = corpus.probe(n)
    await replicas.stubs[0].IngestDocuments(rag_pb.IngestDocumentsRequest(documents=[document]), timeout=60)
    committed = time.perf_counter()
    while time.perf_counter() - committed < FOUND_WITHIN_S:
        found = await replicas.stubs[1].Search(rag_pb.SearchRequest(query=marker, top_k=1), timeout=SEARCH_TIMEOUT_S)
        if found.results and found.results[0].citation.document_id == document.document_id:
            # To the response of the Search that found it.
            return min(time.perf_counter() - committed, FOUND_WITHIN_S)
        await asyncio.sleep(POLL_S)
    return FOUND_WITHIN_S


async def _searches(replicas: _Replicas, corpus: Corpus, n: int) -> list[float]:
    latencies = []
    for i, query in enumerate(corpus.queries(n)):
        began = time.perf_counter()
        await replicas.stubs[i % 2].Search(rag_pb.SearchRequest(query=query, top_k=5), timeout=SEARCH_TIMEOUT_S)
        latencies.append(time.perf_counter() - began)
    return sorted(latencies)


async def run(
    *, sizes: Sequence[int], probes: int, searches: int, budget_s: float, work: Path, progress: Any = print
) -> dict[str, Any]:
    corpus = Corpus()
    checkpoints: list[Checkpoint] = []
    cluster = LocalPostgres(work / "postgres")
    url = await asyncio.to_thread(cluster.start)
    group = ProcessGroup(work)
    replicas = _Replicas(group, work, url)
    loaded_s = 0.0
    try:
        for n in range(2):
            await replicas.start(n)
        for size in sizes:
            batch_latencies: list[float] = []
            stopped_early = False
            while corpus.count < size:
                if loaded_s > budget_s:
                    stopped_early = True
                    break
                took = await _ingest(replicas.stubs[0], corpus.batch(min(BATCH, size - corpus.count)))
                loaded_s += took
                batch_latencies.append(took)
            documents = corpus.count
            load = [round(x, 2) for x in os.getloadavg()]
            found = sorted([await _found_after(replicas, corpus, documents + i) for i in range(probes)])
            searched = await _searches(replicas, corpus, searches)
            rss = [_rss_mb(child) for child in replicas.children]
            startup_s = await replicas.restart(1)
            timed = sorted(batch_latencies[-BATCHES_TIMED:])
            checkpoint = Checkpoint(
                documents=documents,
                load_average=load,
                batch_s=round(timed[len(timed) // 2], 3) if timed else 0.0,
                found_p50_ms=round(percentile(found, 0.5) * 1000, 1),
                found_p95_ms=round(percentile(found, 0.95) * 1000, 1),
                found_late=sum(1 for f in found if f >= FOUND_WITHIN_S),
                search_p50_ms=round(percentile(searched, 0.5) * 1000, 2),
                search_p99_ms=round(percentile(searched, 0.99) * 1000, 2),
                rss_mb=rss,
                startup_s=round(startup_s, 2),
                loaded_s=round(loaded_s, 1),
                stopped_early=stopped_early,
            )
            checkpoints.append(checkpoint)
            progress(_row(asdict(checkpoint)))
            if stopped_early:
                break
    finally:
        await replicas.close()
        await asyncio.to_thread(group.stop)
        await asyncio.to_thread(cluster.stop, mode="immediate")
    return {
        "sizes": list(sizes),
        "probes": probes,
        "searches": searches,
        "budget_s": budget_s,
        "checkpoints": [asdict(c) for c in checkpoints],
    }


# --- the report ------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[Bound]:
    """The RAG targets at the largest size this run reached (they are set at 100,000 documents)."""
    checkpoints = results["checkpoints"]
    if not checkpoints:
        return []
    first, last = checkpoints[0], checkpoints[-1]
    size = f"{last['documents']:,}"
    found: list[Bound] = []
    if len(checkpoints) > 1 and first["batch_s"]:
        found.append(
            Bound(
                f"a batch of 100 at {size} ≤ 2x its latency at {first['documents']:,}",
                round(last["batch_s"] / first["batch_s"], 2),
                2.0,
                False,
            )
        )
    found += [
        Bound(
            "commit → found on the other replica, p95 ≤ 1 s at every size (ms, worst)",
            max(c["found_p95_ms"] for c in checkpoints),
            1000,
            False,
        ),
        Bound(f"Search p99 at {size} ≤ 50 ms", last["search_p99_ms"], 50, False),
        Bound(f"RSS per replica at {size} ≤ 1 GB (MB, larger replica)", max(last["rss_mb"]), 1024, False),
    ]
    if last["documents"] >= 100_000:
        found.append(Bound("100,000 ingested through the service ≤ 5 min (s)", last["loaded_s"], 300, False))
    else:
        found.append(Bound("100,000 ingested through the service ≤ 5 min (s)", None, 300, False))
    return found


def _row(c: dict[str, Any]) -> str:
    early = " (budget reached)" if c["stopped_early"] else ""
    late = f", {c['found_late']} not found in {FOUND_WITHIN_S:g} s" if c["found_late"] else ""
    found = f"{c['found_p50_ms']:,.0f} / {c['found_p95_ms']:,.0f}{late}"
    return (
        f"| {c['documents']:,}{early} | {c['batch_s']:.3f} | {found} |"
        f" {c['search_p50_ms']:,.1f} / {c['search_p99_ms']:,.1f} | {' / '.join(f'{m:,.0f}' for m in c['rss_mb'])} |"
        f" {c['startup_s']:,.1f} | {c['loaded_s']:,.0f} | {', '.join(f'{x:g}' for x in c['load_average'])} |"
    )


def markdown(results: dict[str, Any]) -> str:
    about = results["machine"]
    return "\n".join(
        [
            f"Measured {results['started_at']} on {about['cpu']}, {about['cores']} cores; Python {about['python']};"
            " two `python -m services.rag` processes (own data dirs, BM25, dense off) on one PostgreSQL 15"
            " (throwaway cluster, fsync off). Load average at start"
            f" {', '.join(f'{x:g}' for x in about['load_average_at_start'])} (the machine is shared; each size's"
            f" own is in its row). Whole run {results['wall_s']:.0f} s.",
            "",
            f"Documents of about 110 words ingested through replica 0 in batches of {BATCH}, one at a time; batch ="
            f" median of the last {BATCHES_TIMED} batches to the size; found = Ingest response on replica 0 → first"
            f" Search on replica 1 that finds the new document ({results['probes']} probes, polled every"
            f" {POLL_S * 1000:g} ms); Search = {results['searches']} two-word queries, top 5, one at a time;"
            " start-up = replica 1 restarted on its data dir, to SERVING; loaded = time spent ingesting so far.",
            "",
            "| documents | batch of 100 s | found on the other replica p50 / p95 ms | Search p50 / p99 ms"
            " | RSS MB (replica 0 / 1) | start-up to SERVING s | loaded s | load average |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
            *(_row(c) for c in results["checkpoints"]),
            "",
            *outputs.table(targets(results), "target"),
            "",
        ]
    )


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--sizes {text!r}: expected comma-separated document counts, e.g. 1000,10000") from None
    if not sizes or any(s < 1 for s in sizes) or sizes != sorted(set(sizes)):
        raise ValueError(f"--sizes {text!r}: expected increasing counts of at least 1, e.g. 1000,10000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m bench.rag_growth", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="corpus sizes to measure at, increasing; the last is the largest (default 1000,10000,100000)",
    )
    parser.add_argument("--probes", type=positive_int, default=20, help="commit → found probes per size (default 20)")
    parser.add_argument("--searches", type=positive_int, default=200, help="Search calls per size (default 200)")
    parser.add_argument(
        "--budget", type=float, default=900.0, help="stop loading after this many seconds of ingest (default 900)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="leave the docs page alone")
    args = parser.parse_args(argv)
    try:
        sizes = _sizes(args.sizes)
    except ValueError as error:
        parser.error(str(error))
    if not args.budget > 0:
        parser.error(f"--budget {args.budget}: expected seconds above 0")
    if not installed():
        parser.error("PostgreSQL 15 is not installed (make debian-deps installs postgresql-15)")
    results = outputs.measure(
        "agentmesh-bench-rag-growth-",
        lambda work: run(
            sizes=sizes,
            probes=args.probes,
            searches=args.searches,
            budget_s=args.budget,
            work=work,
            progress=lambda line: print(line, flush=True),
        ),
    )
    doc = None if args.no_doc else args.doc
    outputs.publish(results, markdown(results), name="rag_growth", out=args.out, doc=doc, block=(BEGIN, END))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
