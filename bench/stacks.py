"""The interceptors a bench backend can be given, by name, built with their real constructors.

Scenarios name interceptors (`"auth"`, `"idempotency-sqlite"`, ...); this module is the one place
that knows how to construct each for a benchmark: the configuration a production server would
use, with local stores and a development signing key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class StackOptions:
    """What some interceptors need from the harness: where Redis is, where files may go."""

    redis_url: str | None = None
    data_dir: str = "var/bench"


@dataclass
class Stack:
    interceptors: list[grpc.aio.ServerInterceptor[Any, Any]] = field(default_factory=list)
    on_stopped: list[Hook] = field(default_factory=list)


Factory = Callable[[StackOptions, Stack], Awaitable[None]]
FACTORIES: dict[str, Factory] = {}


async def build_interceptors(names: Sequence[str], options: StackOptions) -> Stack:
    stack = Stack()
    for name in names:
        try:
            factory = FACTORIES[name]
        except KeyError:
            raise ValueError(f"unknown interceptor {name!r}; known: {sorted(FACTORIES)}") from None
        await factory(options, stack)
    return stack


# Interceptors whose store is a Redis server; the harness starts one for them.
NEEDS_REDIS: frozenset[str] = frozenset()
