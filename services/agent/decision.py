"""The agent decision step: a pluggable ``DecisionEngine`` that answers a question from passages.

Engines are chosen by configuration (``load_decision_engine``): a registered name
("extractive", "http") or any ``package.module:factory`` import path, called with the
configured options. So an LLM behind an HTTP API, or an in-house engine, plugs in with no
change to this code. The built-in extractive engine needs no network and no model: it quotes
the retrieved sentences that answer the question, each with its citation.
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import aiohttp
import Stemmer  # type: ignore[import-not-found]

from services.agent.model import Citation

if TYPE_CHECKING:
    from runtime.embedding import Embedder


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved chunk: its text and where it sits in its document."""

    document_id: str
    chunk_id: str
    start_offset: int
    end_offset: int
    text: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "start_offset": self.start_offset,
            "end_offset": self.end_offset,
            "text": self.text,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Passage:
        return cls(
            document_id=str(raw["document_id"]),
            chunk_id=str(raw["chunk_id"]),
            start_offset=int(raw["start_offset"]),
            end_offset=int(raw["end_offset"]),
            text=str(raw["text"]),
            score=float(raw["score"]),
        )


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    run_id: str
    question: str
    passages: tuple[Passage, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    answer: str
    citations: tuple[Citation, ...]
    # The engine's own estimate in [0, 1]; review rules park low-confidence answers.
    confidence: float
    decided_by: str
    # The engine found nothing to answer from and says so (``answer`` explains it to the user).
    abstained: bool = False


@runtime_checkable
class DecisionEngine(Protocol):
    name: str

    async def decide(self, request: DecisionRequest) -> Decision: ...

    async def close(self) -> None: ...


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


_CITATION_MARK = re.compile(r"\[(\d+)\]")


class HttpDecisionEngine:
    """Delegates the decision to an HTTP service, typically an LLM.

    ``protocol="agentmesh"`` posts ``{"run_id", "question", "passages": [...]}`` and expects
    ``{"answer", "citations": [passage indexes, 1-based], "confidence"}``.
    ``protocol="openai-chat"`` speaks the OpenAI-compatible ``/v1/chat/completions`` API
    (vLLM, llama.cpp server, Ollama, ...): passages are numbered in the prompt, the model is
    asked to cite them as [n], and ``assumed_confidence`` is used as the confidence when it does.
    """

    name = "http"

    def __init__(
        self,
        *,
        url: str,
        protocol: str = "agentmesh",
        model: str = "",
        api_key: str = "",
        timeout: float = 20.0,
        assumed_confidence: float = 0.6,
    ) -> None:
        if protocol not in ("agentmesh", "openai-chat"):
            raise ValueError(f"unknown HTTP decision protocol {protocol!r}; use 'agentmesh' or 'openai-chat'")
        self._url = url
        self._protocol = protocol
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._assumed_confidence = assumed_confidence
        self._session: aiohttp.ClientSession | None = None

    async def decide(self, request: DecisionRequest) -> Decision:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        body = self._agentmesh_body(request) if self._protocol == "agentmesh" else self._chat_body(request)
        async with self._session.post(self._url, json=body) as response:
            response.raise_for_status()
            reply = await response.json()
        if self._protocol == "agentmesh":
            answer = str(reply["answer"])
            indexes = [int(i) for i in reply.get("citations", [])]
            confidence = float(reply.get("confidence", 0.0))
        else:
            answer = str(reply["choices"][0]["message"]["content"]).strip()
            indexes = [int(i) for i in _CITATION_MARK.findall(answer)]
            confidence = self._assumed_confidence if indexes else 0.0
        citations = _cite(request.passages, indexes)
        return Decision(
            answer=answer,
            citations=citations,
            confidence=min(max(confidence, 0.0), 1.0),
            decided_by=self.name,
        )

    @staticmethod
    def _agentmesh_body(request: DecisionRequest) -> dict[str, Any]:
        return {
            "run_id": request.run_id,
            "question": request.question,
            "passages": [{"index": i, **p.to_dict()} for i, p in enumerate(request.passages, start=1)],
        }

    def _chat_body(self, request: DecisionRequest) -> dict[str, Any]:
        numbered = "\n\n".join(f"[{i}] {p.text}" for i, p in enumerate(request.passages, start=1))
        return {
            "model": self._model,
            "temperature": 0,
            "messages": [
                {
                    "role": "system",
                    "content": "Answer only from the numbered passages. Cite every claim as [n]. "
                    "If the passages do not contain the answer, say so without citing.",
                },
                {"role": "user", "content": f"Passages:\n{numbered}\n\nQuestion: {request.question}"},
            ],
        }

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _cite(passages: Sequence[Passage], indexes: Sequence[int]) -> tuple[Citation, ...]:
    cited = []
    for index in dict.fromkeys(indexes):  # keeps first-mention order, drops repeats
        if 1 <= index <= len(passages):
            p = passages[index - 1]
            cited.append(Citation(p.document_id, p.chunk_id, p.start_offset, p.end_offset, p.text, p.score))
    return tuple(cited)


ENGINES: Mapping[str, Callable[..., DecisionEngine]] = {
    "extractive": ExtractiveDecisionEngine,
    "http": HttpDecisionEngine,
}


def load_decision_engine(spec: str, options: Mapping[str, Any] | None = None) -> DecisionEngine:
    """Build the engine named by ``spec``: a key of ``ENGINES`` or ``package.module:factory``."""
    options = dict(options or {})
    if spec in ENGINES:
        factory = ENGINES[spec]
    elif ":" in spec:
        module_name, _, attribute = spec.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    else:
        raise ValueError(
            f"unknown decision engine {spec!r}: use one of {sorted(ENGINES)} or an import path 'package.module:factory'"
        )
    engine = factory(**options)
    if not isinstance(engine, DecisionEngine):
        raise TypeError(f"{spec!r} built {type(engine).__name__}, which is not a DecisionEngine")
    return engine
