"""Choose the extractive engine's weights and thresholds on the tuning half of the questions only.

    python -m eval.rag.tune [--lexical]

Retrieves with BM25 (the agent's default retriever) for every tuning question and computes each
candidate sentence's evidence once. The held-out half is never read here: ``python -m eval.rag``
measures the chosen weights on it.

A grid of weights is judged by cross-validation inside the tuning half (5 folds, 3 shuffles): on
each fold's training part the abstention threshold is set by the rule below, and the held-back
fold is answered with it. Among the settings whose cross-validated answered-but-wrong is at most
0.10 and abstention recall at least 0.8, the one with the most right answers wins (ties: fewer
wrong). Its abstention threshold is then set on the whole tuning half by the same rule: the most
right answers with at most 0.08 answered-but-wrong and at least 0.85 of the unanswerable questions
abstained (a margin under the targets, since a threshold set on a sample is optimistic there).

The release threshold (from it up an answer skips review) is a one-sided normal tolerance bound on
the best scores of the unanswerable tuning questions: with 95% confidence, at least a share
``coverage`` of unanswerable questions score under it. It is never below the best of them. The
coverage is chosen by the same cross-validation: the lowest (the most right answers released
unreviewed) at which no held-back unanswerable question reaches its training part's bound. Just
above the sample's best score, the previous rule, released held-back unanswerable questions:
a new question can outscore the best of a sample.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats  # type: ignore[import-untyped]

from eval.rag.__main__ import HERE, load_corpus, load_questions, passages
from eval.rag.metrics import answer_is_right
from runtime.logging import configure_logging
from services.agent.decision import DecisionRequest, ExtractiveDecisionEngine
from services.agent.decision.extractive import Candidate, Weights
from services.rag.chunking import ChunkingOptions
from services.rag.knowledge_base import KnowledgeBase, Mode

FOLDS = 5
SHUFFLES = 3
# The rule that sets a threshold on a sample (a margin under the targets: 0.10 wrong, 0.8 recall).
THRESHOLD_MAX_WRONG = 0.08
THRESHOLD_MIN_RECALL = 0.85
# The release bound: the shares of unanswerable questions it may be set to keep under review, and
# the confidence that it does.
RELEASE_COVERAGES = (0.9, 0.95, 0.975, 0.99, 0.995)
RELEASE_CONFIDENCE = 0.95


async def tuning_candidates(engine: ExtractiveDecisionEngine) -> list[tuple[dict[str, Any], list[Candidate]]]:
    await engine.warm_up()
    questions = [q for q in load_questions(HERE / "questions.jsonl") if q["split"] == "tuning"]
    corpus = load_corpus(HERE / "corpus")
    with tempfile.TemporaryDirectory(prefix="agentmesh-tune-") as data_dir:
        kb = await KnowledgeBase.open(Path(data_dir), embedder=None, chunking=ChunkingOptions())
        try:
            for start in range(0, len(corpus), kb.limits.max_batch_documents):
                await kb.ingest(corpus[start : start + kb.limits.max_batch_documents])
            out = []
            for q in questions:
                hits = await kb.search(q["question"], top_k=kb.limits.max_top_k, mode=Mode.BM25)
                out.append((q, await engine.candidates(DecisionRequest(q["id"], q["question"], passages(hits)))))
            return out
        finally:
            await kb.close()


@dataclass(frozen=True, slots=True)
class Scored:
    """One tuning question under one setting: its best score, and whether answering it would be right."""

    answerable: bool
    best: float
    right: bool


@dataclass(frozen=True, slots=True)
class Figures:
    right: float
    wrong: float
    abstention_recall: float


def score_questions(
    engine: ExtractiveDecisionEngine, data: Sequence[tuple[dict[str, Any], list[Candidate]]], weights: Weights
) -> list[Scored]:
    """Each question's best score and, were the engine to answer, whether it would be right."""
    never_abstain = replace(weights, abstain=float("-inf"), release=float("-inf"))
    scored = []
    for q, candidates in data:
        eligible = [c.score(weights) for c in candidates if weights.similarity > 0 or c.topical]
        decision = engine.choose(candidates, never_abstain)
        quoted = [(c.document_id, c.quote) for c in decision.citations]
        right = bool(q["relevant"]) and answer_is_right(quoted, set(q["relevant"]), q["answers"])
        scored.append(Scored(bool(q["relevant"]), max(eligible, default=float("-inf")), right))
    return scored


def figures(scored: Sequence[Scored], abstain: float) -> Figures:
    return _figures(_arrays(scored), np.array([abstain]))[0]


def _arrays(scored: Sequence[Scored]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    return (
        np.array([s.best for s in scored]),
        np.array([s.right for s in scored]),
        np.array([s.answerable for s in scored]),
    )


def _figures(
    arrays: tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]],
    thresholds: npt.NDArray[np.float64],
) -> list[Figures]:
    """The figures at each threshold at once (the grid times the folds asks for many)."""
    best, right, answerable = arrays
    answered = best[:, None] >= thresholds[None, :]
    n_answerable, n_unanswerable = max(int(answerable.sum()), 1), max(int((~answerable).sum()), 1)
    rights = (answered & (right & answerable)[:, None]).sum(0) / n_answerable
    wrongs = (answered & (~right & answerable)[:, None]).sum(0) / n_answerable
    recalls = (~answered & (~answerable)[:, None]).sum(0) / n_unanswerable
    return [Figures(float(r), float(w), float(a)) for r, w, a in zip(rights, wrongs, recalls, strict=True)]


def choose_threshold(scored: Sequence[Scored]) -> float:
    """The abstention threshold the rule picks on ``scored``.

    Candidates lie halfway between consecutive best scores, so a threshold never sits on a question's score.
    """
    arrays = _arrays(scored)
    values = np.unique(arrays[0][np.isfinite(arrays[0])])
    thresholds = np.concatenate([values[:1] - 0.01, (values[1:] + values[:-1]) / 2, values[-1:] + 0.01])
    found = _figures(arrays, thresholds)
    admissible = [
        (f.right, t)
        for f, t in zip(found, thresholds, strict=True)
        if f.wrong <= THRESHOLD_MAX_WRONG and f.abstention_recall >= THRESHOLD_MIN_RECALL
    ]
    if admissible:
        # Of equally right thresholds, the highest: it abstains on more of what would be wrong.
        return float(max(admissible)[1])
    # Nothing meets the rule: the most unanswerable abstained for the fewest answered-but-wrong.
    return float(
        max(zip(found, thresholds, strict=True), key=lambda ft: (ft[0].abstention_recall - ft[0].wrong, ft[1]))[1]
    )


def _folds(scored: Sequence[Scored]) -> Iterator[tuple[list[Scored], list[Scored]]]:
    """(training part, held-back fold) of the tuning half: 5 folds, 3 shuffles."""
    for shuffle in range(SHUFFLES):
        order = list(range(len(scored)))
        random.Random(shuffle).shuffle(order)
        for fold in range(FOLDS):
            held_back = set(order[fold::FOLDS])
            yield (
                [s for i, s in enumerate(scored) if i not in held_back],
                [s for i, s in enumerate(scored) if i in held_back],
            )


def cross_validated(scored: Sequence[Scored]) -> Figures:
    """Mean figures on held-back folds of the tuning half, each answered with its training part's threshold."""
    results = [figures(test, choose_threshold(train)) for train, test in _folds(scored)]
    return Figures(*(sum(getattr(r, field) for r in results) / len(results) for field in Figures.__slots__))


def release_bound(scored: Sequence[Scored], coverage: float) -> float:
    """The one-sided normal upper tolerance bound for a share ``coverage`` of the unanswerable scores.

    mean + k * standard deviation, k from the noncentral t, at ``RELEASE_CONFIDENCE``.
    """
    unanswerable = np.array([s.best for s in scored if not s.answerable and np.isfinite(s.best)])
    n = len(unanswerable)
    if n < 2:
        return float("-inf")
    k = stats.nct.ppf(RELEASE_CONFIDENCE, n - 1, stats.norm.ppf(coverage) * np.sqrt(n)) / np.sqrt(n)
    return float(unanswerable.mean() + k * unanswerable.std(ddof=1))


def release_threshold(scored: Sequence[Scored], abstain: float, coverage: float) -> float:
    """The release bound, never at or under the best unanswerable score seen, nor the abstention threshold."""
    top_unanswerable = max((s.best for s in scored if not s.answerable), default=abstain)
    return round(max(abstain, top_unanswerable, release_bound(scored, coverage)) + 0.01, 3)


@dataclass(frozen=True, slots=True)
class Release:
    """A coverage under cross-validation: held-back unanswerable questions released, right answers released."""

    coverage: float
    unanswerable_released: int
    right_released: float  # share of the held-back questions answered rightly that skip review


def cross_validated_release(scored: Sequence[Scored]) -> list[Release]:
    """Each coverage's release bound set on a fold's training part, counted on its held-back fold.

    The bound alone, without the floor of the best score seen, so a coverage too low shows.
    """
    released = dict.fromkeys(RELEASE_COVERAGES, 0)
    right_released: dict[float, list[float]] = {c: [] for c in RELEASE_COVERAGES}
    for train, test in _folds(scored):
        abstain = choose_threshold(train)
        rightly_answered = [s for s in test if s.right and s.best >= abstain]
        for coverage in RELEASE_COVERAGES:
            bound = release_bound(train, coverage)
            released[coverage] += sum(1 for s in test if not s.answerable and s.best >= bound)
            if rightly_answered:
                right_released[coverage].append(sum(s.best >= bound for s in rightly_answered) / len(rightly_answered))
    return [Release(c, released[c], sum(right_released[c]) / max(len(right_released[c]), 1)) for c in RELEASE_COVERAGES]


def choose_coverage(releases: Sequence[Release]) -> Release:
    """The lowest coverage that released no held-back unanswerable question (else the fewest released)."""
    return min(releases, key=lambda r: (r.unanswerable_released, -r.right_released))


def grid(lexical_only: bool) -> list[Weights]:
    if lexical_only:
        return [
            Weights(0.0, 1.0, 0.0, rank, 0.0, 0.0, missing=missing, topic=0.0, companion=companion, unmet=unmet)
            for rank, missing, companion, unmet in itertools.product(
                [0.3, 0.5, 0.7, 1.0], [0.0, 0.6, 1.2], [0.05, 0.1, 0.2], [0.0, 0.25, 0.5]
            )
        ]
    return [
        Weights(
            similarity, lexical, cue, rank, 0.0, 0.0, missing=missing, topic=topic, companion=companion, unmet=unmet
        )
        for similarity, topic, lexical, cue, rank, missing, companion, unmet in itertools.product(
            [0.5, 1.0],
            [0.5, 0.75, 1.0],
            [0.1, 0.25],
            [0.0, 0.1],
            [0.75, 1.0, 1.25],
            [0.3, 0.6, 1.0],
            [0.05, 0.2, 0.3],
            [0.0, 0.5, 1.0],
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lexical", action="store_true", help="tune the weights used without the sentence model")
    args = parser.parse_args()
    configure_logging(level="WARNING", fmt="console")
    engine = ExtractiveDecisionEngine(semantic=not args.lexical)
    data = asyncio.run(tuning_candidates(engine))
    results = []
    for weights in grid(args.lexical):
        scored = score_questions(engine, data, weights)
        results.append((cross_validated(scored), weights, scored))
    admissible = [r for r in results if r[0].wrong <= 0.10 and r[0].abstention_recall >= 0.8]
    ranked = sorted(admissible or results, key=lambda r: (-r[0].right, r[0].wrong))
    for cv, weights, scored in ranked[:5]:
        abstain = choose_threshold(scored)
        release = choose_coverage(cross_validated_release(scored))
        chosen = replace(
            weights, abstain=round(abstain, 3), release=release_threshold(scored, abstain, release.coverage)
        )
        print(f"cross-validated {cv}\n  {release}\n  whole tuning half {figures(scored, abstain)}\n  {chosen}")


if __name__ == "__main__":
    main()
