"""Decision engines for tests, plugged in the way any engine is: by import path in configuration.

For example ``AGENTMESH_AGENT_DECISION_ENGINE=tests.services.agent.engines:SlowEngine``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from runtime.embedding import Embedder
from services.agent.decision import Decision, DecisionRequest, ExtractiveDecisionEngine, Passage
from services.agent.model import Citation


class FixedEngine:
    """Answers ``answer`` with ``confidence``, citing every passage it was given."""

    name = "fixed"

    def __init__(self, *, answer: str = "A fixed answer.", confidence: float = 0.9) -> None:
        self._answer = answer
        self._confidence = confidence

    async def decide(self, request: DecisionRequest) -> Decision:
        citations = tuple(
            Citation(p.document_id, p.chunk_id, p.start_offset, p.end_offset, p.text, p.score) for p in request.passages
        )
        return Decision(self._answer, citations, self._confidence, self.name)

    async def close(self) -> None:
        return None


class FailingEngine:
    name = "failing"

    def __init__(self, *, message: str = "model endpoint returned 503") -> None:
        self._message = message

    async def decide(self, request: DecisionRequest) -> Decision:
        raise ConnectionError(self._message)

    async def close(self) -> None:
        return None


class SlowEngine:
    """The extractive engine after ``delay_s`` (a slow model): keeps runs PROCESSING for a while."""

    name = "slow"

    def __init__(self, *, delay_s: float = 30.0) -> None:
        self._delay_s = delay_s
        self._inner = ExtractiveDecisionEngine(semantic=False)

    async def decide(self, request: DecisionRequest) -> Decision:
        await asyncio.sleep(self._delay_s)
        return await self._inner.decide(request)

    async def close(self) -> None:
        return None


class BlockingEngine:
    """Never decides: sets ``entered`` and waits to be cancelled (a run caught mid-decision)."""

    name = "blocking"

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def decide(self, request: DecisionRequest) -> Decision:
        self.entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


class StaticRetriever:
    """The retrieval tool, returning fixed passages and counting calls."""

    def __init__(self, passages: Sequence[Passage] = (), *, error: Exception | None = None) -> None:
        self.passages = list(passages)
        self.error = error
        self.calls: list[tuple[str, dict[str, str], int]] = []

    async def __call__(self, query: str, metadata_filter: Mapping[str, str], top_k: int) -> list[Passage]:
        self.calls.append((query, dict(metadata_filter), top_k))
        if self.error is not None:
            raise self.error
        return self.passages[:top_k]


REFUNDS = Passage(
    document_id="refund-policy",
    chunk_id="refund-policy#0",
    start_offset=11,
    end_offset=91,
    text="Refunds are processed within 5 business days. A refund needs the order number.",
    score=3.2,
)


class Recording:
    """The real model, with the batches it was asked for written down."""

    def __init__(self, model: Embedder) -> None:
        self.model = model
        self.model_name = model.model_name
        self.dimensions = model.dimensions
        self.batches: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.batches.append(list(texts))
        return self.model.embed(texts)
