"""Waiting for a structured log event without polling: a structlog processor that sets an asyncio.Event."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from structlog.testing import capture_logs


class LogEvents:
    def __init__(self, entries: list[MutableMapping[str, Any]]) -> None:
        self.entries = entries
        self._seen: dict[str, asyncio.Event] = {}

    def _spot(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        self._seen.setdefault(event_dict["event"], asyncio.Event()).set()
        return event_dict

    async def wait_for(self, event: str, *, within: float = 10.0) -> MutableMapping[str, Any]:
        await asyncio.wait_for(self._seen.setdefault(event, asyncio.Event()).wait(), within)
        return self.named(event)[0]

    def named(self, event: str) -> list[MutableMapping[str, Any]]:
        return [e for e in self.entries if e["event"] == event]


@contextmanager
def log_events() -> Iterator[LogEvents]:
    holder: list[LogEvents] = []

    def spot(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return holder[0]._spot(logger, method, event_dict)

    with capture_logs(processors=[spot]) as entries:
        holder.append(LogEvents(entries))
        yield holder[0]
