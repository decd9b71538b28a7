"""See how a call really ended, from inside a grpc.aio server interceptor.

A grpc.aio ``ServerInterceptor`` only gets to look at the handler *lookup*; the call's
final status is decided later, inside the handler (grpc issue 24605). So interceptors
that care about the outcome (idempotency, access logs, metrics) wrap the handler's
behaviour instead, and this module is the one way they do it:

* :func:`wrap_handler` rebuilds an ``RpcMethodHandler`` of any of the four kinds with
  a wrapped behaviour, keeping its (de)serializers. Unary-response kinds get a
  coroutine wrapper, streaming-response kinds an async-generator wrapper; request
  streaming changes nothing (the request iterator is passed through untouched).
* :func:`outcome_of` / :func:`outcome_of_error` read the final status the way grpc
  will send it: ``context.set_code``/``set_details``/``set_trailing_metadata``,
  ``context.abort`` (``AbortError``), a cancelled call (``CancelledError``, told apart
  from an expired deadline by the remaining time) and unexpected exceptions.
* :func:`replay` ends a call with a previously recorded outcome (short-circuit).
* :func:`observe` is the common case: call ``on_done(context, outcome, started)`` once, when
  the call ends, however it ends, for unary and streaming calls alike.
* :class:`WrappingInterceptor` is the base of such interceptors: it wraps each method's
  handler once and serves the wrapped handler to every later call.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import grpc
import grpc.aio

from interceptors._typing import (
    Context,
    Continuation,
    Handler,
    Responses,
    ServerInterceptorBase,
    StreamBehavior,
    UnaryBehavior,
)

MetadataValue: TypeAlias = str | bytes
Metadata: TypeAlias = tuple[tuple[str, MetadataValue], ...]

_NO_METADATA: Metadata = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended: the status grpc sends, plus the unary response when there is one."""

    code: grpc.StatusCode
    details: str = ""
    trailing_metadata: Metadata = _NO_METADATA
    # The response object of a successful unary-response call; None otherwise.
    response: Any = None
    # What ended the call when it did not return normally (kept for logging, never sent).
    error: BaseException | None = None

    @property
    def unexpected(self) -> bool:
        """True when the handler crashed rather than ending the call with a status."""
        return self.error is not None and not isinstance(
            self.error, (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit)
        )


def _trailing(context: Context) -> Metadata:
    metadata = context.trailing_metadata()
    return tuple(metadata) if metadata else _NO_METADATA


def outcome_of(context: Context, response: Any = None) -> Outcome:
    """The outcome of a handler that returned normally (it may still have set a code)."""
    code = context.code()
    if code is None or code is grpc.StatusCode.OK:
        return Outcome(grpc.StatusCode.OK, context.details() or "", _trailing(context), response)
    return Outcome(code, context.details() or "", _trailing(context))


def outcome_of_error(context: Context, error: BaseException) -> Outcome:
    """The outcome of a handler that raised ``error`` (abort, cancellation or a crash)."""
    if isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        remaining = context.time_remaining()
        # grpc cancels the handler both when the client goes away and when the
        # deadline passes; only the clock tells which.
        if remaining is not None and remaining <= 0:
            return Outcome(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", error=error)
        return Outcome(grpc.StatusCode.CANCELLED, "Cancelled", error=error)
    code = context.code()
    if isinstance(error, grpc.aio.AbortError):
        return Outcome(code or grpc.StatusCode.UNKNOWN, context.details() or "", _trailing(context), error=error)
    # A crash: grpc sends the code the handler had set, else UNKNOWN.
    if code is None or code is grpc.StatusCode.OK:
        code = grpc.StatusCode.UNKNOWN
    return Outcome(code, "", _trailing(context), error=error)


async def replay(context: Context, outcome: Outcome, extra_trailing: Metadata) -> Any:
    """End the call with ``outcome``: return its response, or abort with its status."""
    trailing = outcome.trailing_metadata + extra_trailing
    if outcome.code is grpc.StatusCode.OK:
        context.set_trailing_metadata(trailing)
        return outcome.response
    await context.abort(outcome.code, outcome.details, trailing)


def wrap_handler(
    handler: Handler,
    *,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    streaming: Callable[[StreamBehavior], StreamBehavior],
) -> Handler:
    """The same handler with its behaviour wrapped (``unary`` for unary responses, else ``streaming``)."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            streaming(_as_async_generator(handler.stream_stream)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            unary(cast(UnaryBehavior, handler.stream_unary)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            streaming(_as_async_generator(handler.unary_stream)),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        unary(cast(UnaryBehavior, handler.unary_unary)),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _as_async_generator(behavior: Any) -> StreamBehavior:
    """Streaming handlers may be async generators or coroutines that ``context.write``; unify them."""
    if inspect.isasyncgenfunction(behavior):
        return behavior  # type: ignore[no-any-return]

    async def writes_then_ends(request: Any, context: Context) -> Responses:
        # grpc.aio accepts context.write() from inside an async generator.
        await behavior(request, context)
        return
        yield  # pragma: no cover - makes this an async generator

    return writes_then_ends


OnDone: TypeAlias = Callable[[Context, Outcome, float], None]


def observe(handler: Handler, on_done: OnDone, *, on_start: Callable[[], None] | None = None) -> Handler:
    """Call ``on_done(context, outcome, started)`` once per call, when it ends.

    ``started`` is the ``time.perf_counter()`` reading taken as the handler started.

    ``on_start()``, if given, runs as the handler starts. Both run inside the call's task,
    so they see its contextvars (trace context, caller); both must be quick and must not raise.
    """

    def unary(behavior: UnaryBehavior) -> UnaryBehavior:
        async def observed(request: Any, context: Context) -> Any:
            if on_start is not None:
                on_start()
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except BaseException as error:
                on_done(context, outcome_of_error(context, error), started)
                raise
            on_done(context, outcome_of(context, response), started)
            return response

        return observed

    def streaming(behavior: StreamBehavior) -> StreamBehavior:
        async def observed(request: Any, context: Context) -> Responses:
            if on_start is not None:
                on_start()
            started = time.perf_counter()
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as error:
                on_done(context, outcome_of_error(context, error), started)
                raise
            on_done(context, outcome_of(context), started)

        return observed

    return wrap_handler(handler, unary=unary, streaming=streaming)


def rpc_kind(handler: Handler) -> str:
    """The call kind as go-grpc-prometheus names it."""
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


class WrappingInterceptor(ServerInterceptorBase):
    """A server interceptor that wraps each method's handler once, not once per call.

    grpc.aio runs ``intercept_service`` for every call, and a generic handler returns
    the same ``RpcMethodHandler`` object for a method every time, so the wrapped
    handler is cached per method and rebuilt only if the inner handler changes. Only
    methods that resolved to a handler are cached, so the cache is bounded by the
    server's own methods, not by what clients send. Subclasses implement :meth:`wrap`.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler to serve ``method`` with, built from the inner ``handler``."""
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        entry = self._wrapped.get(method)
        if entry is not None and entry[0] is handler:
            return entry[1]
        wrapped = self.wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def metadata_value(metadata: Iterable[Any] | None, key: str) -> MetadataValue | None:
    """The first value of ``key`` in invocation metadata (keys arrive lower-cased)."""
    if metadata:
        for item in metadata:
            if item[0] == key:
                value: MetadataValue = item[1]
                return value
    return None
