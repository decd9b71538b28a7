"""Per-method configuration keyed by gRPC method name, with service and global wildcards.

Auth scopes, peer requirements and rate limits are all configured the same way:
``/pkg.Service/Method`` (one method), ``/pkg.Service/*`` (every method of a service)
or ``*`` (everything). The most specific pattern wins. Lookups are memoised per
method name because the set of methods a server sees is small and fixed, which keeps
the per-call cost to one dict hit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

ANY_METHOD = "*"


def validate_pattern(pattern: str) -> str:
    """Return ``pattern`` unchanged if it is a method, service wildcard or ``*``; else raise."""
    if pattern == ANY_METHOD:
        return pattern
    parts = pattern.split("/")
    if len(parts) != 3 or parts[0] != "" or not parts[1] or not parts[2]:
        raise ValueError(f"method pattern {pattern!r} must look like '/pkg.Service/Method', '/pkg.Service/*' or '*'")
    if "*" in parts[1] or ("*" in parts[2] and parts[2] != "*"):
        raise ValueError(f"method pattern {pattern!r}: '*' may only stand for the whole method name")
    return pattern


def service_wildcard(method: str) -> str:
    """``/pkg.Service/Method`` -> ``/pkg.Service/*``."""
    return method[: method.rfind("/") + 1] + "*"


class MethodRules(Generic[T]):
    """Resolves a full method name to the value of its most specific matching pattern."""

    __slots__ = ("_cache", "_rules")

    def __init__(self, rules: Mapping[str, T]) -> None:
        self._rules: dict[str, T] = {validate_pattern(p): v for p, v in rules.items()}
        self._cache: dict[str, T | None] = {}

    def __contains__(self, method: str) -> bool:
        return self.lookup(method) is not None

    def __bool__(self) -> bool:
        return bool(self._rules)

    def match(self, method: str) -> tuple[int, T] | None:
        """The best match and its specificity (2 exact, 1 service wildcard, 0 ``*``); not memoised."""
        rules = self._rules
        for specificity, pattern in ((2, method), (1, service_wildcard(method)), (0, ANY_METHOD)):
            value = rules.get(pattern)
            if value is not None:
                return specificity, value
        return None

    def lookup(self, method: str) -> T | None:
        try:
            return self._cache[method]
        except KeyError:
            pass
        found = self.match(method)
        value = None if found is None else found[1]
        # Callers look up only methods that resolved to a handler (or that their own
        # client calls), so this cache is bounded by the API surface, not by clients.
        self._cache[method] = value
        return value
