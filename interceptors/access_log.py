"""One structured log line per call: method, code, duration, peer, caller.

The line is written when the call has really ended (see ``interceptors.outcome``), so
it carries the status the client got, including aborts, cancellations and deadlines.
The trace id is added by the logging pipeline (``interceptors.tracing.add_trace_context``),
like on every other line logged during the call. Levels follow go-grpc-middleware:
client mistakes at info, conditions worth a look at warning, server faults at error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import grpc.aio
import structlog

from interceptors._typing import Context, Handler
from interceptors.identity import current_caller
from interceptors.outcome import Outcome, WrappingInterceptor, observe

_S = grpc.StatusCode
LEVELS: dict[grpc.StatusCode, int] = {
    **{code: logging.INFO for code in _S},
    **{
        code: logging.WARNING
        for code in (
            _S.DEADLINE_EXCEEDED,
            _S.PERMISSION_DENIED,
            _S.RESOURCE_EXHAUSTED,
            _S.FAILED_PRECONDITION,
            _S.ABORTED,
            _S.OUT_OF_RANGE,
            _S.UNAVAILABLE,
        )
    },
    **{code: logging.ERROR for code in (_S.UNKNOWN, _S.UNIMPLEMENTED, _S.INTERNAL, _S.DATA_LOSS)},
}


# Health checks and reflection would drown the log (a checker calls every few seconds);
# metrics still count them.
PROBES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AccessLogInterceptor(WrappingInterceptor):
    """Log each finished call once, at a level chosen by its status code; methods under ``skip`` are not logged."""

    def __init__(
        self,
        *,
        logger: Any | None = None,
        levels: dict[grpc.StatusCode, int] | None = None,
        skip: tuple[str, ...] = PROBES,
    ) -> None:
        super().__init__()
        self._log = logger if logger is not None else structlog.get_logger("agentmesh.access")
        self._levels = LEVELS if levels is None else {**LEVELS, **levels}
        self._skip = skip

    def wrap(self, method: str, handler: Handler) -> Handler:
        if method.startswith(self._skip):
            return handler
        log = self._log.bind(method=method)
        levels = self._levels

        def done(context: Context, outcome: Outcome, started: float) -> None:
            # A call torn down by cancellation (the client went away, the deadline passed) may
            # already be freed in grpc core; context.peer() on it segfaults the process.
            cancelled = isinstance(outcome.error, (asyncio.CancelledError, GeneratorExit))
            log.log(
                levels[outcome.code],
                "rpc finished",
                code=outcome.code.name,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                peer="" if cancelled else context.peer(),
                caller=current_caller.get().subject,
            )

        return observe(handler, done)
