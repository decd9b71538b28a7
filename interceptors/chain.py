"""The one place that orders the interceptor chain, server side and client side.

Server chain, outermost first (grpc.aio runs the first interceptor outermost):

1. tracing      - the call's trace context, before anything can log or fail, so every
                  log line and error (auth refusals included) carries the trace id;
2. metrics      - every call counted by its final code, rejections included;
3. access log   - one line per call with the status the client really got;
4. errors       - recovery: a crash anywhere inside (auth, a store, the handler) becomes
                  INTERNAL, which the metrics and the log line above then see;
5. deadline     - refuse work that is already late and give deadline-less calls the
                  default, before paying for auth or quota;
6. auth         - SLOT (interceptors.auth.AuthInterceptor): establishes the caller;
7. rate limit   - SLOT (interceptors.rate_limit.RateLimitInterceptor): quotas are per
                  caller, so after auth;
8. idempotency  - innermost: keys are scoped to the authenticated caller, a replay still
                  passes auth and quota, and what is recorded is the handler's own outcome.

The bootstrap puts its drain gate and request decoding in front of this chain.

Client chain (a service's outgoing calls), outermost first: tracing (one client span
around all attempts), deadline (the remaining budget, which bounds the retries too), then
SLOTS for forwarding the verified caller, the retry policy and the circuit breaker
(``runtime.resilience.upstream_guards`` groups its interceptors by these slots); the
breaker innermost so that every attempt counts toward its state.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc.aio

from interceptors._typing import ServerInterceptorBase
from interceptors.access_log import AccessLogInterceptor
from interceptors.deadline import DeadlineInterceptor, deadline_client_interceptors
from interceptors.idempotency import IdempotencyInterceptor
from interceptors.metrics import Metrics, MetricsInterceptor
from interceptors.recovery import RecoveryInterceptor
from interceptors.tracing import Tracing, TracingInterceptor, tracing_client_interceptors


def server_chain(
    *,
    tracing: Tracing | None,
    metrics: Metrics | None,
    access_log: AccessLogInterceptor | None,
    default_deadline_s: float,
    auth: ServerInterceptorBase | None = None,
    rate_limit: ServerInterceptorBase | None = None,
    idempotency: IdempotencyInterceptor | None = None,
) -> list[ServerInterceptorBase]:
    """The server interceptors in the order explained above; a part given as None is left out."""
    chain: list[ServerInterceptorBase | None] = [
        None if tracing is None else TracingInterceptor(tracing=tracing),
        None if metrics is None else MetricsInterceptor(metrics=metrics),
        access_log,
        RecoveryInterceptor(),
        DeadlineInterceptor(default_timeout=default_deadline_s),
        auth,  # SLOT: interceptors.auth.AuthInterceptor
        rate_limit,  # SLOT: interceptors.rate_limit.RateLimitInterceptor
        idempotency,
    ]
    return [interceptor for interceptor in chain if interceptor is not None]


def client_chain(
    *,
    tracing: Tracing | None,
    deadline_margin_s: float,
    forwarding: Sequence[grpc.aio.ClientInterceptor] = (),
    retry: Sequence[grpc.aio.ClientInterceptor] = (),
    circuit_breaker: Sequence[grpc.aio.ClientInterceptor] = (),
) -> list[grpc.aio.ClientInterceptor]:
    """The client interceptors in the order explained above."""
    return [
        *(() if tracing is None else tracing_client_interceptors(tracing=tracing)),
        *deadline_client_interceptors(margin=deadline_margin_s),
        *forwarding,  # SLOT: forwarding of the verified caller's credentials
        *retry,  # SLOT: the retry policy's interceptors
        *circuit_breaker,  # SLOT: the circuit breaker's interceptors
    ]
