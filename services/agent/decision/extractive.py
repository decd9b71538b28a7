"""The built-in engine: quotes the retrieved sentences that answer the question, cited; no network."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import Stemmer  # type: ignore[import-not-found]

from services.agent.decision.engine import Decision, DecisionRequest, Passage
from services.agent.model import Citation

if TYPE_CHECKING:
    from runtime.embedding import Embedder


_WORD = re.compile(r"\w+", re.UNICODE)
# A sentence ends at . ! or ? followed by white space (not inside `grpc.health.v1` or 0.99), or at
# the end of its line: headings and list items are lines of their own.
_SENTENCE = re.compile(r"\S[^\n]*?(?:[.!?]+(?=\s|$)|$)", re.MULTILINE)
_LIST_MARKER = re.compile(r"[-*+]\s+")
_STOPWORDS = frozenset(
    _WORD.findall(
        "a an and are as at be by can do does for from has have how i in is it its of on or so that the this"
        " to was what when where which who why will with you your"
    )
)
# Words a question uses for its shape rather than its topic: "how long does X take" asks about X.
# A sentence sharing only these with the question ("at least 12 characters long") does not answer it.
_WEAK_WORDS = frozenset(
    _WORD.findall(
        "long take much many often get make need use happen work mean way thing kind type go come give keep"
        " know want like tell say should must could would may might there one also just more most some any"
        " all each every other about after before good best"
    )
)
# Weak words still count a little: of two sentences on the topic, the one that also says how long wins.
_WEAK_WEIGHT = 0.25
# Another form of a question's word ("refund" for "refunds") counts less than the word itself: it
# often comes from a sentence on a neighbouring point ("a refund request needs ...").
_OTHER_FORM_WEIGHT = 0.5


class _Terms:
    """Content words by Snowball stem (as the RAG index tokenizes), each with the forms it had."""

    def __init__(self) -> None:
        # Not thread-safe (it caches), but decisions run on the event loop, one at a time per engine.
        self._stemmer = Stemmer.Stemmer("english")
        self.weak = frozenset(self._stemmer.stemWords(sorted(_WEAK_WORDS)))

    def __call__(self, text: str) -> dict[str, set[str]]:
        words = [w for w in (w.lower() for w in _WORD.findall(text)) if w not in _STOPWORDS and len(w) > 1]
        terms: dict[str, set[str]] = {}
        for word, stem in zip(words, self._stemmer.stemWords(words), strict=True):
            terms.setdefault(stem, set()).add(word)
        return terms


@dataclass(frozen=True, slots=True)
class _Candidate:
    relevance: float  # what the ranking and the cut-off use
    coverage: float  # share of the question's content words in the sentence (the confidence)
    rank: int  # of its passage in retrieval order
    position: int  # in its passage
    citation: Citation


NO_KNOWLEDGE = "The knowledge base has nothing on this question."


class ExtractiveDecisionEngine:
    """Answers with the retrieved sentences that answer the question, cited.

    A sentence answers when it shares a topical word with the question, not only words like
    "long" or "take" that give a question its shape. Sentences are ranked by the weighted share of
    the question's words they contain, and only those scoring at least ``min_relative_relevance``
    of the best are quoted (at most ``max_sentences``), so one good answer is not padded with
    weaker ones. With an ``embedder`` (``dense=True``: the RAG service's model), relevance is the
    cosine similarity of question and sentence instead, and a sentence must reach
    ``min_similarity``: that also finds answers phrased in other words than the question.

    Confidence is the share of the question's content words found in the best sentence. Only
    passages that retrieval scored at least ``min_relative_score`` of the best one are read.
    """

    name = "extractive"

    def __init__(
        self,
        *,
        max_sentences: int = 3,
        min_coverage: float = 0.2,
        min_relative_score: float = 0.5,
        min_relative_relevance: float = 0.9,
        dense: bool = False,
        min_similarity: float = 0.3,
        embedder: Embedder | None = None,
    ) -> None:
        self._max_sentences = max_sentences
        self._min_coverage = min_coverage
        self._min_relative_score = min_relative_score
        self._min_relative_relevance = min_relative_relevance
        self._min_similarity = min_similarity
        if embedder is None and dense:
            # The model the RAG service embeds chunks with; imported only when asked for (torch).
            from runtime.embedding import MiniLmEmbedder  # noqa: PLC0415

            embedder = MiniLmEmbedder()
        self._embedder = embedder
        self._terms = _Terms()

    async def decide(self, request: DecisionRequest) -> Decision:
        question = self._terms(request.question)
        strong = question.keys() - self._terms.weak or question.keys()

        def weight(stem: str, forms: set[str]) -> float:
            kind = 1.0 if stem in strong else _WEAK_WEIGHT
            return kind if forms & question[stem] else kind * _OTHER_FORM_WEIGHT

        total = sum(weight(stem, forms) for stem, forms in question.items())
        candidates: list[_Candidate] = []
        seen: set[tuple[str, int]] = set()
        for rank, passage, start, sentence in self._sentences(request.passages):
            # Overlapping chunks repeat sentences; quote each once.
            if (passage.document_id, passage.start_offset + start) in seen:
                continue
            seen.add((passage.document_id, passage.start_offset + start))
            terms = self._terms(sentence)
            shared = question.keys() & terms.keys()
            coverage = len(shared) / len(question) if question else 0.0
            if self._embedder is None and (not shared & strong or coverage < self._min_coverage):
                continue
            citation = Citation(
                document_id=passage.document_id,
                chunk_id=passage.chunk_id,
                start_offset=passage.start_offset + start,
                end_offset=passage.start_offset + start + len(sentence),
                quote=sentence,
                score=passage.score,
            )
            relevance = sum(weight(stem, terms[stem]) for stem in shared) / total if total else 0.0
            candidates.append(_Candidate(relevance, coverage, rank, start, citation))
        if self._embedder is not None:
            candidates = await self._by_similarity(request.question, candidates)
        # Of two sentences that match the question equally, the one from the passage retrieval
        # ranked higher (read with the whole of its context) is the likelier answer.
        top_score = max((p.score for p in request.passages), default=0.0)
        if top_score > 0:
            candidates = [replace(c, relevance=c.relevance * c.citation.score / top_score) for c in candidates]
        if not candidates:
            return Decision(answer=NO_KNOWLEDGE, citations=(), confidence=1.0, decided_by=self.name, abstained=True)
        ranked = sorted(candidates, key=lambda c: (-c.relevance, c.rank, c.position))
        cut = ranked[0].relevance * self._min_relative_relevance
        best = [c for c in ranked if c.relevance >= cut][: self._max_sentences]
        # Read in document order within the chosen set, so the answer flows like the source.
        chosen = sorted(best, key=lambda c: (c.rank, c.position))
        citations = tuple(c.citation for c in chosen)
        answer = " ".join(f"{c.quote} [{i}]" for i, c in enumerate(citations, start=1))
        return Decision(answer=answer, citations=citations, confidence=best[0].coverage, decided_by=self.name)

    def _sentences(self, passages: Sequence[Passage]) -> Iterator[tuple[int, Passage, int, str]]:
        """(passage rank, passage, offset in it, sentence) of the passages worth reading."""
        top_score = max((p.score for p in passages), default=0.0)
        for rank, passage in enumerate(passages):
            if top_score > 0 and passage.score < top_score * self._min_relative_score:
                continue
            for match in _SENTENCE.finditer(passage.text):
                sentence = match.group()
                # A Markdown heading names a topic but states nothing; an answer quotes statements.
                if sentence.startswith("#"):
                    continue
                start = match.start()
                if marker := _LIST_MARKER.match(sentence):
                    sentence, start = sentence[marker.end() :], start + marker.end()
                sentence = sentence.rstrip()
                if sentence:
                    # Offsets are code points, like Python string indices.
                    yield rank, passage, start, sentence

    async def _by_similarity(self, question: str, candidates: list[_Candidate]) -> list[_Candidate]:
        """The candidates similar enough to the question, with their similarity as relevance."""
        assert self._embedder is not None
        if not candidates:
            return []
        texts = [question, *(c.citation.quote for c in candidates)]
        # The model runs on the CPU for tens of milliseconds: off the event loop.
        vectors = await asyncio.to_thread(self._embedder.embed, texts)
        similarities = vectors[1:] @ vectors[0]
        return [
            replace(c, relevance=float(similarity))
            for c, similarity in zip(candidates, similarities, strict=True)
            if similarity >= self._min_similarity
        ]

    async def close(self) -> None:
        return None
