"""Idempotency keys in process memory: for tests and single-process development.

Not shared between processes and lost on restart; use SQLite or Redis otherwise.
The event loop makes every operation atomic, since none of them awaits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bounded.lru import LRUCache
from interceptors.idempotency.store import Entry


@dataclass(slots=True)
class _Slot:
    fingerprint: str
    owner: str | None
    record: bytes | None
    expires_at: float


class MemoryStore:
    """An in-memory store bounded to ``max_entries`` keys (the oldest go first)."""

    def __init__(self, *, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        # Oldest claim first: reading a slot (a retry finding its record) does not keep it longer.
        self._slots: LRUCache[str, _Slot] = LRUCache(max_entries)

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease: float) -> Entry | None:
        now = time.monotonic()
        slot = self._slots.peek(key)
        if slot is not None and slot.expires_at > now:
            return Entry(slot.fingerprint, slot.record)
        self._slots[key] = _Slot(fingerprint, owner, None, now + lease)
        return None

    async def complete(self, key: str, owner: str, record: bytes, *, ttl: float) -> None:
        slot = self._slots.peek(key)
        if slot is not None and slot.owner == owner:
            slot.owner = None
            slot.record = record
            slot.expires_at = time.monotonic() + ttl

    async def release(self, key: str, owner: str) -> None:
        slot = self._slots.peek(key)
        if slot is not None and slot.owner == owner:
            self._slots.pop(key)

    async def close(self) -> None:
        self._slots.clear()
