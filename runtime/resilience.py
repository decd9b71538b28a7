"""A service's outgoing calls to its backends: caller forwarding, retries and a breaker per backend.

The policies are plain objects (`Retrier`, `BreakerSet`): the gateway's proxy applies them inside
its handler, with no client interceptor on its channels; the agent's channels wrap them in
interceptors, which come out in the order they must run (outermost first): forward the
verified caller's token, retry idempotent calls, then the circuit breaker, innermost so
that every attempt counts toward the backend's state and no retry goes into an open
circuit. ``AGENTMESH_<SERVICE>_UPSTREAM_RESILIENCE`` holds the policies as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
from google.protobuf.descriptor_pool import DescriptorPool
from pydantic import BaseModel, ConfigDict, Field

from interceptors.auth_forwarding import forwarding_interceptors
from interceptors.circuit_breaker import BreakerPolicy, BreakerSet, StateListener, circuit_breaker_interceptors
from interceptors.retry import Retrier, RetryPolicy, retry_interceptors


class UpstreamResilience(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    breaker: BreakerPolicy = Field(default_factory=BreakerPolicy)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class UpstreamGuards:
    """The policies for a service's upstream calls, and their client interceptors grouped by chain slot."""

    forwarding: list[grpc.aio.ClientInterceptor]
    retry: list[grpc.aio.ClientInterceptor]
    circuit_breaker: list[grpc.aio.ClientInterceptor]
    breakers: BreakerSet
    retrier: Retrier

    @property
    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        return [*self.forwarding, *self.retry, *self.circuit_breaker]


def upstream_guards(
    resilience: UpstreamResilience,
    *,
    target_of: Callable[[str], str],
    pool: DescriptorPool | None = None,
    on_state_change: StateListener | None = None,
    service_token_file: Path | None = None,
) -> UpstreamGuards:
    """Guards for channels to several backends; ``target_of`` names the backend of a method.

    ``pool`` is where methods' ``idempotency_level`` is looked up (the default pool
    holds every generated module imported; the gateway passes its descriptor set).
    ``service_token_file`` holds the service's own token for calls made on no caller's behalf.
    """
    breakers = BreakerSet(resilience.breaker, target_of=target_of, on_state_change=on_state_change)
    retrier = Retrier(resilience.retry, breakers=breakers, pool=pool)
    return UpstreamGuards(
        forwarding=forwarding_interceptors(service_token_file=service_token_file),
        retry=retry_interceptors(retrier=retrier),
        circuit_breaker=circuit_breaker_interceptors(breakers),
        breakers=breakers,
        retrier=retrier,
    )
