"""The event bus contract: at-least-once delivery to consumer groups, acknowledged per event.

Every backend behaves the same way:
- ``publish`` appends an event to a named stream.
- ``subscribe`` joins a consumer *group*: every group sees every event of the stream (from
  the oldest retained one when the group is new); consumers inside one group share the work.
- An event is acknowledged when its handler returns. A handler that raises leaves it
  unacknowledged, so it is delivered again (after a delay, to any consumer of the group)
  until ``max_deliveries`` is reached; then it is dead-lettered and logged.

Delivery is therefore at-least-once, and handlers make it effectively-once by deduplicating
on ``Event.id`` (see ``runtime.events.dedup``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Event:
    """A fact that happened. ``key`` names the entity it is about (a run id, a document id)."""

    stream: str
    type: str
    key: str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    occurred_at: float = field(default_factory=time.time)
    # Propagation headers (W3C traceparent, ...), so a consumer's span joins the producer's trace.
    headers: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "stream": self.stream,
                "type": self.type,
                "key": self.key,
                "data": self.data,
                "occurred_at": self.occurred_at,
                "headers": self.headers,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        raw = json.loads(text)
        return cls(
            id=raw["id"],
            stream=raw["stream"],
            type=raw["type"],
            key=raw["key"],
            data=raw.get("data", {}),
            occurred_at=raw["occurred_at"],
            headers=raw.get("headers", {}),
        )


Handler = Callable[[Event], Awaitable[None]]


class Subscription(Protocol):
    """A running consumer. ``close`` stops it; an event being handled is left unacknowledged."""

    async def close(self) -> None: ...


class EventBus(Protocol):
    async def publish(self, event: Event) -> None: ...

    async def subscribe(self, stream: str, *, group: str, consumer: str, handler: Handler) -> Subscription:
        """Start consuming ``stream`` as ``consumer`` inside ``group``; returns once joined."""
        ...

    async def close(self) -> None:
        """Stop every subscription and release connections."""
        ...
