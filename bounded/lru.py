"""A mapping that holds at most ``capacity`` entries and drops the least recently used first.

One implementation for every in-process cache of the mesh (verified tokens, idempotency slots,
rate-limit buckets, prepared statements, embeddings, handled event ids, the console's traces). Not
thread-safe: the event loop serializes its users, and a user shared between threads holds its own
lock around compound steps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """Entries by key, oldest use first: ``get`` and assignment make an entry the most recent, ``peek``
    and ``in`` do not, and an assignment that passes ``capacity`` drops the least recently used."""

    __slots__ = ("_entries", "capacity")

    def __init__(self, capacity: int) -> None:
        # bool is an int to Python, but `True` is not a size.
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"an LRU cache's capacity must be a whole number, 0 or more; got {capacity!r}")
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value of ``key``, now the most recently used, or None."""
        try:
            self._entries.move_to_end(key)
        except KeyError:
            return None
        return self._entries[key]

    def peek(self, key: K) -> V | None:
        """The value of ``key`` without using it (its place in the eviction order stays), or None."""
        return self._entries.get(key)

    def __setitem__(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def pop(self, key: K) -> V | None:
        """Remove ``key``; its value, or None if it was not there."""
        return self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def values(self, *, newest_first: bool = False) -> Iterator[V]:
        """The values in order of use, least recent first unless ``newest_first``; none is used by it."""
        values = self._entries.values()
        return reversed(values) if newest_first else iter(values)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)
