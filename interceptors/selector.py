"""Which methods a rule or a concern applies to: one method-pattern grammar, and matchers built on it.

The grammar, used by the interceptors' policies (auth scopes and peers, rate limits), by the
server layer's matchers and by the mesh policy (``mesh/policy.yaml``) alike:

* ``/pkg.Service/Method``: one method;
* ``/pkg.Service/*``: every method of one service;
* ``*``: every method.

Nothing else (no partial names, no package wildcards): a pattern either names a method, a
service or everything, so it can be checked against the contracts (``mesh check``).

A matcher (``Matcher``, a predicate on the full method name) is what a concern of the server
layer is given instead of its own skip or exempt list, as go-grpc-middleware's ``selector``
does: the layer asks it once per method, when the method's handler is compiled, so a method a
concern does not apply to pays nothing for it per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator

T = TypeVar("T")

ANY_METHOD = "*"

Matcher = Callable[[str], bool]


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


# A pattern field in a pydantic model (settings, mesh policy): validated with the grammar above.
MethodPattern = Annotated[str, AfterValidator(validate_pattern)]


def service_wildcard(method: str) -> str:
    """``/pkg.Service/Method`` -> ``/pkg.Service/*``."""
    return method[: method.rfind("/") + 1] + "*"


def matches(pattern: str, method: str) -> bool:
    """Whether ``pattern`` (already valid) covers the full method name ``method``."""
    return pattern in (ANY_METHOD, method) or (pattern.endswith("/*") and service_wildcard(method) == pattern)


def path_match(pattern: str) -> dict[str, str]:
    """The pattern as a proxy's match on the HTTP/2 path: Envoy's StringMatcher and Istio's
    StringMatch both read ``{"prefix": ...}`` or ``{"exact": ...}``."""
    if validate_pattern(pattern) == ANY_METHOD:
        return {"prefix": "/"}
    if pattern.endswith("/*"):
        return {"prefix": pattern[:-1]}
    return {"exact": pattern}


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


class _Methods:
    """A matcher for the methods named by some patterns (a set lookup per method)."""

    __slots__ = ("_everything", "_exact", "_services", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(validate_pattern(p) for p in patterns)
        self._everything = ANY_METHOD in self.patterns
        self._services = frozenset(p for p in self.patterns if p.endswith("/*"))
        self._exact = frozenset(p for p in self.patterns if not p.endswith("*"))

    def __call__(self, method: str) -> bool:
        return self._everything or method in self._exact or service_wildcard(method) in self._services

    def __repr__(self) -> str:
        return f"methods{self.patterns!r}"


def methods(*patterns: str) -> Matcher:
    """Matches the methods any of ``patterns`` covers."""
    return _Methods(patterns)


def except_(matcher: Matcher) -> Matcher:
    """Matches what ``matcher`` does not."""

    def unmatched(method: str) -> bool:
        return not matcher(method)

    unmatched.__qualname__ = f"except_({matcher!r})"
    return unmatched


def every_method(_method: str) -> bool:
    return True


# gRPC's own services, which probes and tools call: health checks and reflection.
HEALTH = "/grpc.health.v1.Health/*"
REFLECTION = ("/grpc.reflection.v1.ServerReflection/*", "/grpc.reflection.v1alpha.ServerReflection/*")
PROBES: Matcher = methods(HEALTH, *REFLECTION)
NOT_PROBES: Matcher = except_(PROBES)
# Streams meant to stay open as long as the client wants: health watches, reflection sessions.
LONG_LIVED: Matcher = methods("/grpc.health.v1.Health/Watch", *REFLECTION)
NOT_LONG_LIVED: Matcher = except_(LONG_LIVED)
