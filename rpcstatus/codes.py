"""gRPC status codes named in configuration ("UNAVAILABLE", ...): validated once, used as a set."""

from __future__ import annotations

from collections.abc import Iterable

import grpc


def error_code_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """Pydantic validator body: every name must be a gRPC error code (OK is not an error)."""
    for name in names:
        if name not in grpc.StatusCode.__members__ or name == "OK":
            raise ValueError(f"{name!r} is not a gRPC error code name (e.g. 'UNAVAILABLE')")
    return names


def code_set(names: Iterable[str]) -> frozenset[grpc.StatusCode]:
    return frozenset(grpc.StatusCode[name] for name in names)
