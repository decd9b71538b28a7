"""The built-in engine: quotes the retrieved sentence that answers the question, cited, or says none does.

Every sentence of the passages retrieval ranked first is a candidate. Each is scored by what it
says about the question, not by how many words it happens to share with it: the semantic
similarity of question and sentence (all-MiniLM-L6-v2, the model the RAG service embeds with,
loaded once per process), the same for the sentence read under its section heading (alone, "On
shutdown it deregisters." says little; under "Service discovery with Consul" it says whether a
service leaves Consul when it stops), the lexical evidence (the question's topical words the sentence holds),
a question-type cue (a "what is the default / how long / how many" question wants a sentence
naming a value: one that names none is on the topic without answering) and the rank retrieval
gave its passage. The section heading is the chunk's heading path when retrieval gives it
("Retry policy > Backoff"), so the document's title is part of what a sentence is read under.
The weights and thresholds were chosen by cross-validation inside the tuning half of ``eval/rag``
only (``python -m eval.rag.tune``); the held-out half measures them.

When the best sentence scores below the abstention threshold the engine says the knowledge base
does not cover the question (no citations); between that and the release threshold it answers
with a confidence under the agent's default review threshold, so a person looks first.

Without onnxruntime and the model wheel (the ``dense`` extra) it scores on the lexical evidence, cue
and rank alone, with thresholds chosen the same way for that case.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import Stemmer  # type: ignore[import-not-found]
import structlog

from runtime.embedding import (
    DEFAULT_MODEL_CACHE,
    Embedder,
    EmbeddingCache,
    checked_niceness,
    forward_threads,
    loaded_minilm,
    shared_minilm,
)
from services.agent.decision.engine import Decision, DecisionRequest, Passage
from services.agent.model import Citation

log = structlog.get_logger(__name__)

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
# Questions whose vectors are being embedded ahead of their decisions, at most (the oldest forgotten
# first: a run that failed before deciding never collects its own).
_PREPARED_AT_MOST = 256
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


# A question asking for a value: a default, an amount, a duration, a size.
_VALUE_QUESTION = re.compile(
    r"\b(default|how (long|many|much|big|soon|often|large)|what (size|value|limit)|maximum|minimum|limit)\b",
    re.IGNORECASE,
)
# A sentence naming one: a number (in digits or words), a unit, or "default".
_VALUE = re.compile(
    r"\b(\d+|default|one|two|three|four|five|ten|twelve|seventeen|thirty|sixty|hundred|thousand"
    r"|seconds?|minutes?|hours?|days?|[KMG]i?B)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Weights:
    """How the evidence combines into a sentence's score, and where the engine stops answering."""

    similarity: float
    lexical: float
    cue: float
    rank: float
    # Below ``abstain`` the engine says nothing answers; from ``release`` up the answer's confidence
    # reaches the agent's default review threshold (0.25), so it goes to the user unreviewed.
    abstain: float
    release: float
    # Taken off per share of the question's topical words that no passage read contains: a question
    # about "gzip" or "WebSockets" over passages that never say them is likely not covered.
    missing: float = 0.0
    # On the similarity of the question with the sentence read under its section heading.
    topic: float = 0.0
    # A second sentence of the best one's document is quoted when it scores within this of the best.
    companion: float = 0.05
    # Taken off a sentence that names no value when the question asks for one ("What is the default
    # cool-down?" over "After a cool-down it turns half-open"): it is on the topic and does not answer.
    unmet: float = 0.0


# Chosen on the tuning half of eval/rag (python -m eval.rag.tune); see docs/rag.md for the figures.
SEMANTIC_WEIGHTS = Weights(
    similarity=1.0,
    topic=0.5,
    lexical=0.1,
    cue=0.0,
    rank=0.75,
    missing=0.6,
    companion=0.3,
    unmet=0.5,
    abstain=1.365,
    release=1.634,
)
# The release threshold is the older rule's (just above the best unanswerable tuning score): the tolerance
# bound `tune --lexical` prints (1.42) would send "How long do refunds take?" (1.367) to review while the
# model loads; eval/rag/README.md says more.
LEXICAL_WEIGHTS = Weights(similarity=0.0, lexical=1.0, cue=0.0, rank=0.7, abstain=1.054, release=1.325, missing=0.6)
# The confidence the engine gives an answer scoring exactly ``release``: the agent's default review threshold.
_RELEASE_CONFIDENCE = 0.25


@dataclass(frozen=True, slots=True)
class Candidate:
    """A sentence that might answer, with the evidence for it."""

    citation: Citation
    rank: int  # of its passage in retrieval order
    position: int  # in its passage
    similarity: float  # cosine with the question (0 without the model)
    topic_similarity: float  # cosine of the sentence under its section heading with the question (0 without the model)
    lexical: float  # weighted share of the question's words it holds
    topical: bool  # holds a topical word of the question, not only shape words like "long"
    cue: float  # 1 when the question asks for a value and the sentence names one
    unmet: float  # 1 when the question asks for a value and the sentence names none
    rank_score: float  # its passage's retrieval score over the best passage's
    missing: float  # share of the question's topical words in none of the passages read

    def score(self, weights: Weights) -> float:
        return (
            weights.similarity * self.similarity
            + weights.topic * self.topic_similarity
            + weights.lexical * self.lexical
            + weights.cue * self.cue
            + weights.rank * self.rank_score
            - weights.missing * self.missing
            - weights.unmet * self.unmet
        )


NO_KNOWLEDGE = "The knowledge base has nothing on this question."
# The model process's niceness by default: below the agent's own loop, which serves the calls.
MODEL_NICENESS = 10


class ExtractiveDecisionEngine:
    """Answers with the retrieved sentence that answers the question, cited; abstains when none does.

    ``semantic=True`` (the default) scores with the MiniLM model when it is installed, else warns
    once and scores lexically; ``embedder`` supplies the model (tests, the evaluation). ``weights``
    overrides the tuned weights. At most ``max_sentences`` are quoted: the best, and the next ones
    of its document scoring within the weights' ``companion`` margin of it. The vectors of the last
    ``embedding_cache_size`` texts embedded are kept, so a sentence recurring across questions is
    embedded once (0: embed every text every time). The model's process runs at ``model_niceness``
    (0-19, ``os.nice``): decisions are background work next to the calls the agent serves, whose
    event loop should get the cores first (docs/benchmarks.md, GetRun's tail).
    """

    name = "extractive"

    def __init__(
        self,
        *,
        semantic: bool = True,
        embedder: Embedder | None = None,
        weights: Weights | None = None,
        max_sentences: int = 2,
        embedding_cache_size: int = 10_000,
        model_niceness: int = MODEL_NICENESS,
    ) -> None:
        self._model_niceness = checked_niceness(model_niceness, "model_niceness")
        self._semantic = semantic or embedder is not None
        self._embedder = embedder
        self._weights = weights
        self._max_sentences = max_sentences
        self._terms = _Terms()
        self._embedding_cache = EmbeddingCache(embedding_cache_size)
        # Questions being embedded ahead of their decision (``prepare``), on the event loop's side.
        self._preparing: OrderedDict[str, asyncio.Task[npt.NDArray[np.float32]]] = OrderedDict()
        # The model loads in a daemon thread (about a second; seconds more on a first start, exporting its
        # graph); until it is there, decisions score lexically.
        self._loaded = threading.Event()
        self._loading = threading.Lock()
        self._started = embedder is not None or not semantic
        if self._started:
            self._loaded.set()

    def preload(self, *, model_cache: Path = DEFAULT_MODEL_CACHE) -> None:
        """Start loading the model in the background; the agent calls this as it starts, and does not wait.

        The model's ONNX graph is kept in ``model_cache``. A thread count the model cannot use
        (OMP_NUM_THREADS) raises ValueError here, not in the background.
        """
        with self._loading:
            if self._started:
                return
            # Already in this process: no thread needed.
            if (model := loaded_minilm(niceness=self._model_niceness)) is not None:
                self._started = True
                self._embedder = model
                self._loaded.set()
                return
            forward_threads()
            self._started = True
            threading.Thread(target=self._load, args=(model_cache,), name="sentence-model", daemon=True).start()

    def _load(self, model_cache: Path) -> None:
        began = time.monotonic()
        try:
            self._embedder = shared_minilm(model_cache, niceness=self._model_niceness)
            log.info(
                "extractive engine scores with the sentence model",
                model=self._embedder.model_name,
                load_s=round(time.monotonic() - began, 1),
            )
        except ImportError as error:
            log.warning(
                "extractive engine scores lexically: the sentence model is not installed",
                error=str(error),
                install="pip install 'agentmesh[dense]'",
            )
        except (OSError, RuntimeError) as error:  # e.g. its graph could be neither read nor exported
            log.warning("extractive engine scores lexically: the sentence model did not load", error=str(error))
        finally:
            self._loaded.set()

    async def warm_up(self) -> None:
        """Load the model and wait for it (the evaluation does, so every question is scored alike)."""
        self.preload()
        await asyncio.to_thread(self._loaded.wait)

    def _ready_model(self) -> Embedder | None:
        if self._semantic:
            self.preload()
        return self._embedder if self._loaded.is_set() else None

    @property
    def weights(self) -> Weights:
        return self._weights_for(self._ready_model())

    def _weights_for(self, embedder: Embedder | None) -> Weights:
        if self._weights is not None:
            return self._weights
        return SEMANTIC_WEIGHTS if embedder is not None else LEXICAL_WEIGHTS

    def prepare(self, question: str) -> None:
        """Start embedding ``question`` into the cache now, so its decision (after retrieval) finds
        the vector there instead of waiting for a forward pass of its own."""
        embedder = self._ready_model()
        if embedder is None or not self._embedding_cache.max_entries or question in self._preparing:
            return
        pass_ = asyncio.ensure_future(asyncio.to_thread(self._embedding_cache.embed, embedder, [question]))
        # A failed pass is only a miss: the decision embeds the question itself.
        pass_.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._preparing[question] = pass_
        while len(self._preparing) > _PREPARED_AT_MOST:
            self._preparing.popitem(last=False)

    async def decide(self, request: DecisionRequest) -> Decision:
        embedder = self._ready_model()
        candidates = await self._candidates(request, embedder)
        return self.choose(candidates, self._weights_for(embedder))

    async def candidates(self, request: DecisionRequest) -> list[Candidate]:
        """Every sentence of the passages, with its evidence (similarity from the model when it is loaded)."""
        return await self._candidates(request, self._ready_model())

    async def _candidates(self, request: DecisionRequest, embedder: Embedder | None) -> list[Candidate]:
        question = self._terms(request.question)
        strong = question.keys() - self._terms.weak or question.keys()

        def weight(stem: str, forms: set[str]) -> float:
            kind = 1.0 if stem in strong else _WEAK_WEIGHT
            return kind if forms & question[stem] else kind * _OTHER_FORM_WEIGHT

        total = sum(weight(stem, forms) for stem, forms in question.items())
        wants_value = bool(_VALUE_QUESTION.search(request.question))
        top_score = max((p.score for p in request.passages), default=0.0)
        read = set().union(*(self._terms(p.text).keys() for p in request.passages))
        missing = len(strong - read) / len(strong) if strong else 0.0
        candidates: list[Candidate] = []
        seen: set[tuple[str, int]] = set()
        headed: list[str] = []
        for rank, passage, start, heading, sentence in _sentences(request.passages):
            # Overlapping chunks repeat sentences; weigh each once.
            if (passage.document_id, passage.start_offset + start) in seen:
                continue
            seen.add((passage.document_id, passage.start_offset + start))
            headed.append(f"{heading}: {sentence}" if heading else sentence)
            terms = self._terms(sentence)
            shared = question.keys() & terms.keys()
            candidates.append(
                Candidate(
                    citation=Citation(
                        document_id=passage.document_id,
                        chunk_id=passage.chunk_id,
                        start_offset=passage.start_offset + start,
                        end_offset=passage.start_offset + start + len(sentence),
                        quote=sentence,
                        score=passage.score,
                    ),
                    rank=rank,
                    position=start,
                    similarity=0.0,
                    topic_similarity=0.0,
                    lexical=sum(weight(stem, terms[stem]) for stem in shared) / total if total else 0.0,
                    topical=bool(shared & strong),
                    cue=1.0 if wants_value and _VALUE.search(sentence) else 0.0,
                    unmet=1.0 if wants_value and not _VALUE.search(sentence) else 0.0,
                    rank_score=passage.score / top_score if top_score > 0 else 0.0,
                    missing=missing,
                )
            )
        preparing = self._preparing.pop(request.question, None)
        if preparing is not None:
            # Embedding the question again while that pass runs would cost a second one.
            with contextlib.suppress(Exception):
                await preparing
        if embedder is not None and candidates:
            # Off the event loop; sentences embedded for an earlier question come from the cache, the
            # rest (often the question alone) in one forward pass. Each sentence is embedded alone and
            # under its section heading.
            count = len(candidates)
            vectors = await asyncio.to_thread(
                self._embedding_cache.embed,
                embedder,
                [request.question, *(c.citation.quote for c in candidates), *headed],
            )
            similarities = np.clip(vectors[1:] @ vectors[0], 0.0, 1.0)
            candidates = [
                replace(c, similarity=float(s), topic_similarity=float(t))
                for c, s, t in zip(candidates, similarities[:count], similarities[count:], strict=True)
            ]
        return candidates

    def choose(self, candidates: Sequence[Candidate], weights: Weights | None = None) -> Decision:
        """The decision the candidates support under ``weights`` (the engine's own by default)."""
        weights = weights or self.weights
        # Without the model, a sentence sharing only shape words ("long", "take") with the question says
        # nothing about it.
        eligible = [c for c in candidates if weights.similarity > 0 or c.topical]
        scored = sorted(((c.score(weights), c) for c in eligible), key=lambda sc: (-sc[0], sc[1].rank, sc[1].position))
        if not scored or scored[0][0] < weights.abstain:
            return Decision(
                answer=NO_KNOWLEDGE, citations=(), confidence=1.0, decided_by=f"{self.name}:not-found", abstained=True
            )
        best_score, best = scored[0]
        # A second sentence only from the same document and nearly as good: one answer, not a collage.
        companions = [
            c
            for s, c in scored[1:]
            if c.citation.document_id == best.citation.document_id and s >= best_score - weights.companion
        ]
        chosen = [best, *companions[: self._max_sentences - 1]]
        # Read in document order, so the answer flows like the source.
        chosen.sort(key=lambda c: (c.rank, c.position))
        citations = tuple(c.citation for c in chosen)
        answer = " ".join(f"{c.quote} [{i}]" for i, c in enumerate(citations, start=1))
        return Decision(
            answer=answer, citations=citations, confidence=_confidence(best_score, weights), decided_by=self.name
        )

    async def close(self) -> None:
        return None


def _confidence(score: float, weights: Weights) -> float:
    """Maps a score to [0, 1] with ``release`` at the review threshold: linear below it, and above it."""
    if score < weights.release:
        span = max(weights.release - weights.abstain, 1e-9)
        return max(0.0, _RELEASE_CONFIDENCE * (score - weights.abstain) / span)
    top = weights.similarity + weights.topic + weights.lexical + weights.cue + weights.rank
    span = max(top - weights.release, 1e-9)
    return min(1.0, _RELEASE_CONFIDENCE + (1 - _RELEASE_CONFIDENCE) * (score - weights.release) / span)


def _sentences(passages: Sequence[Passage]) -> Iterator[tuple[int, Passage, int, str, str]]:
    """(passage rank, passage, offset in it, section heading above it, sentence) of every statement in them.

    The heading is the passage's heading path when retrieval gave one ("Retry policy > Backoff": the
    document's title too, and a chunk that starts mid-section has no heading line of its own), else
    the last heading line above the sentence in the passage.
    """
    for rank, passage in enumerate(passages):
        heading = passage.heading
        for match in _SENTENCE.finditer(passage.text):
            sentence = match.group()
            # A Markdown heading names a topic but states nothing; an answer quotes statements.
            if sentence.startswith("#"):
                heading = passage.heading or sentence.lstrip("#").strip()
                continue
            start = match.start()
            if marker := _LIST_MARKER.match(sentence):
                sentence, start = sentence[marker.end() :], start + marker.end()
            sentence = sentence.rstrip()
            if sentence:
                # Offsets are code points, like Python string indices.
                yield rank, passage, start, heading, sentence
