"""Token-bucket rate limits per (caller, method), for the gateway.

Each verified caller gets its own bucket for each limited method: ``rate_per_second``
tokens refill continuously up to ``burst``, each call takes one. Limits come from a
:class:`RateLimitPolicy` keyed by method pattern (``/pkg.Service/Method``,
``/pkg.Service/*``, ``*``), with optional per-subject overrides (a batch client gets more,
a suspicious one less). Which methods are limited is looked up once per method and policy
(a dict hit per call), so a live policy change (``replace_policy``) applies from the next call.

Over the limit, the call ends with RESOURCE_EXHAUSTED carrying ``RetryInfo`` (when the
next token arrives, which retrying clients honour), ``QuotaFailure`` (whose quota ran
out) and ``ErrorInfo`` reason ``RATE_LIMITED``.

The concern must run inside auth (after it in the chain): it reads the caller auth
verified, at call time. Unauthenticated calls to public methods share the ``anonymous``
bucket; keep such methods unlimited here and shed abusive anonymous traffic at the edge.

Buckets live in a bounded LRU. An evicted bucket comes back full, which errs towards
letting a caller through; the bound only matters beyond ``max_buckets`` distinct active
(caller, method) pairs. The hot path is one dict lookup, a clock read and a few floats:
no locks, because grpc.aio runs every interceptor on the event loop thread.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import grpc.aio
from google.rpc import error_details_pb2
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bounded.lru import LRUCache
from interceptors._typing import Context
from interceptors.identity import current_caller
from interceptors.layer import Check, Concern, MethodInfo
from interceptors.selector import Matcher, MethodRules, every_method, validate_pattern
from rpcstatus.details import error_status
from rpcstatus.errors import error_info, retry_info


class Limit(BaseModel):
    """A token bucket: sustained ``rate_per_second``, bursts of up to ``burst`` calls."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class RateLimitPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Method pattern -> limit for each caller of it.
    limits: dict[str, Limit] = {}
    # Caller subject -> method pattern -> limit, replacing ``limits`` for that caller.
    caller_limits: dict[str, dict[str, Limit]] = {}

    @field_validator("limits")
    @classmethod
    def _check_patterns(cls, value: dict[str, Limit]) -> dict[str, Limit]:
        for pattern in value:
            validate_pattern(pattern)
        return value

    @field_validator("caller_limits")
    @classmethod
    def _check_caller_patterns(cls, value: dict[str, dict[str, Limit]]) -> dict[str, dict[str, Limit]]:
        for per_method in value.values():
            for pattern in per_method:
                validate_pattern(pattern)
        return value


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; 0.0 on success, else seconds until one is available."""
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


class RateLimiter:
    """The buckets and the decision, independent of gRPC (so it is easy to test and reuse)."""

    def __init__(
        self,
        policy: RateLimitPolicy,
        *,
        max_buckets: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._default = MethodRules(policy.limits)
        self._per_caller = {subject: MethodRules(rules) for subject, rules in policy.caller_limits.items()}
        self._clock = clock
        self._buckets: LRUCache[tuple[str, str], TokenBucket] = LRUCache(max_buckets)

    def replace_policy(self, policy: RateLimitPolicy) -> None:
        """Swap the limits while serving (live config); buckets restart full under the new limits."""
        self._policy = policy
        self._default = MethodRules(policy.limits)
        self._per_caller = {subject: MethodRules(rules) for subject, rules in policy.caller_limits.items()}
        self._buckets.clear()

    @property
    def policy(self) -> RateLimitPolicy:
        return self._policy

    def limits_method(self, method: str) -> bool:
        """Whether any caller has a limit on ``method`` (if not, it needs no check at all)."""
        if self._default.lookup(method) is not None:
            return True
        return any(rules.lookup(method) is not None for rules in self._per_caller.values())

    def limit_for(self, subject: str, method: str) -> Limit | None:
        rules = self._per_caller.get(subject)
        if rules is not None:
            limit = rules.lookup(method)
            if limit is not None:
                return limit
        return self._default.lookup(method)

    def acquire(self, subject: str, method: str) -> float:
        """0.0 if the call may proceed, else the seconds to wait before retrying."""
        key = (subject, method)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            limit = self.limit_for(subject, method)
            if limit is None:
                return 0.0
            bucket = TokenBucket(limit.rate_per_second, float(limit.burst), float(limit.burst), now)
            self._buckets[key] = bucket
        return bucket.take(now)


def rate_limited_status(subject: str, method: str, retry_after: float, limit: Limit | None) -> grpc.Status:
    # Round up to the millisecond so a client sleeping exactly this long finds a token.
    delay_ms = max(1, math.ceil(retry_after * 1000))
    described = "" if limit is None else f" ({limit.rate_per_second:g}/s, burst {limit.burst})"
    violation = error_details_pb2.QuotaFailure.Violation(
        subject=f"caller:{subject}",
        description=f"rate limit for {method}{described} exceeded",
        quota_id="CallsPerCallerPerMethod",
        quota_dimensions={"caller": subject, "method": method},
    )
    return error_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"rate limit exceeded for {subject!r} on {method}; retry in {delay_ms} ms",
        retry_info(delay_ms / 1000),
        error_details_pb2.QuotaFailure(violations=[violation]),
        error_info("RATE_LIMITED", method=method, caller=subject),
    )


class RateLimitInterceptor(Concern):
    """Rejects calls over the caller's per-method token bucket with RESOURCE_EXHAUSTED.

    Every method ``select`` matches (all by default) gets the check, because a live
    policy may limit a method the configured one does not; a method no limit covers costs a
    dict lookup per call.
    """

    def __init__(self, *, limiter: RateLimiter, select: Matcher = every_method) -> None:
        self._limiter = limiter
        self._limited: dict[str, bool] = {}
        self.select = select

    def compile(self, info: MethodInfo) -> Check:
        return Check(self._check_for(info.name))

    @property
    def policy(self) -> RateLimitPolicy:
        return self._limiter.policy

    def replace_policy(self, policy: RateLimitPolicy) -> None:
        """New limits from the next call on, without a restart (see runtime/live_config/enforce.py)."""
        self._limiter.replace_policy(policy)
        self._limited = {}

    def _check_for(self, method: str) -> Callable[[Context], grpc.Status | None]:
        limiter = self._limiter

        def check(_context: Context) -> grpc.Status | None:
            limited = self._limited.get(method)
            if limited is None:
                limited = self._limited[method] = limiter.limits_method(method)
            if not limited:
                return None
            subject = current_caller.get().subject
            retry_after = limiter.acquire(subject, method)
            if retry_after == 0.0:
                return None
            return rate_limited_status(subject, method, retry_after, limiter.limit_for(subject, method))

        return check
