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

from interceptors._typing import Context, Responses, StreamBehavior, UnaryBehavior
from interceptors.layer import Concern, MethodInfo, Wrap
from interceptors.selector import Matcher, every_method
from interceptors.tracing import current_trace_id

_CONTROL_FLOW = (grpc.aio.AbortError, GeneratorExit)


def _message() -> str:
    trace_id = current_trace_id()
    if trace_id is not None:
        return f"internal error (trace id {trace_id})"
    return "internal error"


class RecoveryInterceptor(Concern):
    """Recovery: an exception that is not a gRPC status becomes INTERNAL, logged with its stack."""

    def __init__(self, *, logger: Any | None = None, select: Matcher = every_method) -> None:
        self._log = logger if logger is not None else structlog.get_logger("agentmesh.errors")
        self.select = select

    def compile(self, info: MethodInfo) -> Wrap:
        log = self._log
        method = info.name

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

        return Wrap(unary=unary, streaming=streaming)
