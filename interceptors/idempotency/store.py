"""The one small interface every idempotency store implements.

A key moves through two states: *claimed* (a call is running it; the claim is a lease
that lapses, so a crashed server does not block the key forever) and *completed* (the
recorded outcome, kept for the TTL). Releasing a claim forgets the key, so a retry
runs the handler again. ``claim`` must be atomic: of many concurrent claims for one
key, exactly one wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Entry:
    """What a store holds for a key someone else has claimed or completed."""

    fingerprint: str
    # The encoded outcome once the call finished; None while it is still running.
    record: bytes | None


class IdempotencyStore(Protocol):
    async def claim(self, key: str, fingerprint: str, owner: str, *, lease: float) -> Entry | None:
        """Claim ``key`` for ``owner`` for ``lease`` seconds; None if claimed, else the existing entry."""
        ...

    async def complete(self, key: str, owner: str, record: bytes, *, ttl: float) -> None:
        """Record ``owner``'s outcome for ``ttl`` seconds (a no-op if its lease was lost)."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Forget ``owner``'s claim so that a retry runs (no-op if the lease was lost)."""
        ...

    async def close(self) -> None:
        """Release connections and threads."""
        ...
