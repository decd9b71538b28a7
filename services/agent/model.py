"""The run record and its events, as the domain sees them (the servicer maps them to protobuf)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.agent.state_machine import RunState


@dataclass(frozen=True, slots=True)
class Citation:
    """A span of a knowledge-base document that supports an answer (offsets in code points)."""

    document_id: str
    chunk_id: str
    start_offset: int
    end_offset: int
    quote: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "start_offset": self.start_offset,
            "end_offset": self.end_offset,
            "quote": self.quote,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Citation:
        return cls(
            document_id=str(raw["document_id"]),
            chunk_id=str(raw["chunk_id"]),
            start_offset=int(raw["start_offset"]),
            end_offset=int(raw["end_offset"]),
            quote=str(raw["quote"]),
            score=float(raw["score"]),
        )


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    question: str
    state: RunState
    # Incremented by every change, so read models apply a snapshot only if it is newer.
    version: int
    create_time: float
    update_time: float
    creator: str = ""
    request_id: str = ""
    answer: str = ""
    citations: tuple[Citation, ...] = ()
    status_reason: str = ""
    decided_by: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    retrieval_filter: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # Field by field, in declaration order: ``dataclasses.asdict`` deep-copies every value
        # recursively, and every write, event and read-model row serializes the run.
        return {
            "run_id": self.run_id,
            "question": self.question,
            "state": str(self.state),
            "version": self.version,
            "create_time": self.create_time,
            "update_time": self.update_time,
            "creator": self.creator,
            "request_id": self.request_id,
            "answer": self.answer,
            "citations": [c.to_dict() for c in self.citations],
            "status_reason": self.status_reason,
            "decided_by": self.decided_by,
            "labels": dict(self.labels),
            "retrieval_filter": dict(self.retrieval_filter),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Run:
        return cls(
            run_id=raw["run_id"],
            question=raw["question"],
            state=RunState(raw["state"]),
            version=int(raw["version"]),
            create_time=float(raw["create_time"]),
            update_time=float(raw["update_time"]),
            creator=raw.get("creator", ""),
            request_id=raw.get("request_id", ""),
            answer=raw.get("answer", ""),
            citations=tuple(Citation.from_dict(c) for c in raw.get("citations", ())),
            status_reason=raw.get("status_reason", ""),
            decided_by=raw.get("decided_by", ""),
            labels=dict(raw.get("labels", {})),
            retrieval_filter=dict(raw.get("retrieval_filter", {})),
        )


class EventType:
    CREATED = "run.created"
    STATE_CHANGED = "run.state_changed"
    STEP_COMPLETED = "run.step_completed"
    STEP_COMPENSATED = "run.step_compensated"


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One entry of the run event log. ``run`` is the run as it was right after the event."""

    sequence: int
    event_id: str
    run_id: str
    type: str
    cause: str
    create_time: float
    run: Run
    from_state: RunState | None = None
    to_state: RunState | None = None
