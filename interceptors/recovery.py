"""Turn unexpected exceptions into INTERNAL, without leaking them to the client.

grpc.aio answers a crashed handler with UNKNOWN and ``"Unexpected <class ...>: <message>"``,
which tells a stranger about our internals and tells the caller nothing useful. This
interceptor logs the exception with its stack (the log line carries the trace id) and
sends INTERNAL with a generic message that names the trace id, so a person can quote it
when reporting the problem. Statuses the handler chose (abort, set_code) pass untouched.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import structlog
from opentelemetry import trace

from interceptors._typing import Context, Handler, Responses, StreamBehavior, UnaryBehavior
from interceptors.outcome import WrappingInterceptor, wrap_handler

_CONTROL_FLOW = (grpc.aio.AbortError, GeneratorExit)


def _message() -> str:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return f"internal error (trace id {span_context.trace_id:032x})"
    return "internal error"


class RecoveryInterceptor(WrappingInterceptor):
    """Recovery: an exception that is not a gRPC status becomes INTERNAL, logged with its stack."""

    def __init__(self, *, logger: Any | None = None) -> None:
        super().__init__()
        self._log = logger if logger is not None else structlog.get_logger("agentmesh.errors")

    def wrap(self, method: str, handler: Handler) -> Handler:
        log = self._log

        async def crashed(context: Context, error: Exception) -> None:
            log.error("unhandled exception", method=method, exc_info=error)
            # The handler may have set a code before crashing; the crash wins.
            await context.abort(grpc.StatusCode.INTERNAL, _message())

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def recovered(request: Any, context: Context) -> Any:
                try:
                    return await behavior(request, context)
                except _CONTROL_FLOW:
                    raise
                except Exception as error:
                    await crashed(context, error)

            return recovered

        def streaming(behavior: StreamBehavior) -> StreamBehavior:
            async def recovered(request: Any, context: Context) -> Responses:
                try:
                    async for response in behavior(request, context):
                        yield response
                except _CONTROL_FLOW:
                    raise
                except Exception as error:
                    await crashed(context, error)

            return recovered

        return wrap_handler(handler, unary=unary, streaming=streaming)
