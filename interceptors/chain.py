"""The one place that orders the interceptor chain, server side and client side.

Server chain: one layer (``interceptors.layer.ServerChain``), compiled once per method into
one handler; each concern decides then whether it applies to the method (its matcher) and
what it does for it. Outermost first:

1. tracing      - the call's trace context, before anything can log or fail, so every
                  log line and error (auth refusals included) carries the trace id;
2. metrics      - every call counted by its final code, refusals included;
3. access log   - one line per call with the status the client really got (not probes);
4. recovery     - a crash anywhere inside (auth, a store, the handler) becomes INTERNAL,
                  which the metrics and the log line above then see;
5. deadline     - refuse work that is already late and give deadline-less calls the
                  default (not to long-lived streams), before paying for anything below;
6. drain        - while the server drains, new calls end UNAVAILABLE (DRAINING), counted
                  and logged like every other refusal (not probes: checkers must see it);
7. auth         - SLOT (interceptors.auth.AuthInterceptor): establishes the caller;
                  a public method gets no auth work at all;
8. rate limit   - SLOT (interceptors.rate_limit.RateLimitInterceptor): quotas are per
                  caller, so after auth;
9. decode       - the request parsed here, so a corrupt one is INVALID_ARGUMENT (and is
                  not parsed at all for a caller auth or quota refused);
10. idempotency - innermost: keys are scoped to the authenticated caller, a replay still
                  passes auth and quota, and what is recorded is the handler's own outcome.

Drain, auth and rate limit are checks: they share one wrapper frame; metrics and the access
log share one outcome. The bootstrap compiles the chain into every handler as it registers
it, so grpc.aio runs no interceptor per call (``runtime/bootstrap.py``).

Client chain (a service's outgoing calls), outermost first: tracing (one client span
around all attempts), deadline (the remaining budget, which bounds the retries too), then
SLOTS for forwarding the verified caller, the retry policy and the circuit breaker
(``runtime.resilience.upstream_guards`` groups its interceptors by these slots); the
breaker innermost so that every attempt counts toward its state.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc.aio

from interceptors.access_log import AccessLogInterceptor
from interceptors.deadline import DeadlineInterceptor, deadline_client_interceptors
from interceptors.decode import DecodeInterceptor
from interceptors.drain import DrainInterceptor
from interceptors.idempotency import IdempotencyInterceptor
from interceptors.layer import Concern, ServerChain
from interceptors.metrics import Metrics, MetricsInterceptor
from interceptors.recovery import RecoveryInterceptor
from interceptors.tracing import Tracing, TracingInterceptor, tracing_client_interceptors


def server_chain(
    *,
    tracing: Tracing | None,
    metrics: Metrics | None,
    access_log: AccessLogInterceptor | None,
    default_deadline_s: float,
    auth: Concern | None = None,
    rate_limit: Concern | None = None,
    idempotency: IdempotencyInterceptor | None = None,
    drain: DrainInterceptor | None = None,
    decode: bool = True,
) -> ServerChain:
    """The server layer in the order explained above; a part given as None is left out.

    ``drain`` is the gate the bootstrap closes when the server drains (a new one if None).
    """
    parts: list[Concern | None] = [
        None if tracing is None else TracingInterceptor(tracing=tracing),
        None if metrics is None else MetricsInterceptor(metrics=metrics),
        access_log,
        RecoveryInterceptor(),
        DeadlineInterceptor(default_timeout=default_deadline_s),
        drain if drain is not None else DrainInterceptor(),
        auth,  # SLOT: interceptors.auth.AuthInterceptor
        rate_limit,  # SLOT: interceptors.rate_limit.RateLimitInterceptor
        DecodeInterceptor() if decode else None,
        idempotency,
    ]
    return ServerChain([part for part in parts if part is not None])


def bootstrap_chain() -> ServerChain:
    """What every server gets even without a service chain: the drain gate and request decoding."""
    return ServerChain([DrainInterceptor(), DecodeInterceptor()])


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
