"""The agent decision step: a pluggable ``DecisionEngine`` that answers a question from passages.

Engines are chosen by configuration (``load_decision_engine``): a registered name
("extractive", "http") or any ``package.module:factory`` import path, called with the
configured options. So an LLM behind an HTTP API, or an in-house engine, plugs in with no
change to this code. The built-in extractive engine needs no network and no model: it quotes
the retrieved sentences that best cover the question, each with its citation.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import aiohttp

from services.agent.model import Citation


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
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)", re.MULTILINE)
_STOPWORDS = frozenset(
    _WORD.findall(
        "a an and are as at be by can do does for from has have how i in is it its of on or so that the this"
        " to was what when where which who why will with you your"
    )
)


def _terms(text: str) -> set[str]:
    return {word for word in (w.lower() for w in _WORD.findall(text)) if word not in _STOPWORDS and len(word) > 1}


NO_KNOWLEDGE = "The knowledge base has nothing on this question."


class ExtractiveDecisionEngine:
    """Answers with the retrieved sentences that best cover the question's terms, cited.

    Confidence is the share of the question's content words found in the best sentence.
    Only passages that retrieval scored at least ``min_relative_score`` of the best one are
    quoted: a sentence sharing one common word with the question ("long") from a passage
    retrieval ranked far below is not part of the answer.
    """

    name = "extractive"

    def __init__(self, *, max_sentences: int = 3, min_coverage: float = 0.2, min_relative_score: float = 0.5) -> None:
        self._max_sentences = max_sentences
        self._min_coverage = min_coverage
        self._min_relative_score = min_relative_score

    async def decide(self, request: DecisionRequest) -> Decision:
        question_terms = _terms(request.question)
        candidates: list[tuple[float, int, int, Citation]] = []
        top_score = max((p.score for p in request.passages), default=0.0)
        for rank, passage in enumerate(request.passages):
            if top_score > 0 and passage.score < top_score * self._min_relative_score:
                continue
            for match in _SENTENCE.finditer(passage.text):
                sentence = match.group().strip()
                # A Markdown heading names a topic but states nothing; an answer quotes statements.
                if not sentence or sentence.startswith("#") or not question_terms:
                    continue
                coverage = len(question_terms & _terms(sentence)) / len(question_terms)
                if coverage < self._min_coverage:
                    continue
                # Offsets are code points, like Python string indices; strip() moved the start.
                start = match.start() + (len(match.group()) - len(match.group().lstrip()))
                citation = Citation(
                    document_id=passage.document_id,
                    chunk_id=passage.chunk_id,
                    start_offset=passage.start_offset + start,
                    end_offset=passage.start_offset + start + len(sentence),
                    quote=sentence,
                    score=passage.score,
                )
                candidates.append((coverage, rank, match.start(), citation))
        if not candidates:
            return Decision(answer=NO_KNOWLEDGE, citations=(), confidence=1.0, decided_by=self.name, abstained=True)
        best = sorted(candidates, key=lambda c: (-c[0], c[1], c[2]))[: self._max_sentences]
        # Read in document order within the chosen set, so the answer flows like the source.
        chosen = sorted(best, key=lambda c: (c[1], c[2]))
        citations = tuple(c[3] for c in chosen)
        answer = " ".join(f"{c.quote} [{i}]" for i, c in enumerate(citations, start=1))
        return Decision(answer=answer, citations=citations, confidence=best[0][0], decided_by=self.name)

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
