"""What every decision engine takes and gives: passages in, a cited (or abstaining) decision out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

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
    # The chunk's heading path in its document ("Retry policy > Backoff"); empty when it has none.
    heading: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "start_offset": self.start_offset,
            "end_offset": self.end_offset,
            "text": self.text,
            "score": self.score,
            "heading": self.heading,
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
            # Runs retrieved before passages carried it have none.
            heading=str(raw.get("heading", "")),
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


@runtime_checkable
class Preloads(Protocol):
    """An engine with something slow to load (a model): the server starts loading it, without waiting.

    ``model_cache`` is a directory the engine may keep files derived from its model in (the
    service's data dir's ``models/``). A setting the model cannot use raises ValueError at once.
    """

    def preload(self, *, model_cache: Path) -> None: ...
