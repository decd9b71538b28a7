"""The server layer: every concern of the chain compiled, once per method, into one handler.

A grpc.aio server interceptor costs an awaited coroutine, a continuation partial and a handler
lookup per call, and most concerns (the access log, metrics, idempotency) must re-wrap the
handler anyway to see the call's real outcome (grpc issue 24605). So the chain is not a list of
interceptors: each concern says, once per method, what it adds to that method (a *step*, or
nothing), and this module builds the method's handler from those steps in one pass. The
decision of which concerns apply to a method (its auth rule, whether it is rate limited or
takes idempotency keys, whether it is a probe or a long-lived stream) is taken then, not per
call. grpc-go did the same for the same reason (grpc-go PR 4524).

Steps, outermost first in the order the chain lists its concerns (``interceptors/chain.py``):

* :class:`Wrap`: wraps the behaviour (tracing context, recovery, deadline, decoding,
  idempotency); may take the raw request bytes (decoding) or replace the response serializer;
* :class:`Check`: a synchronous admission check run before the inner behaviour (drain, auth,
  peer, rate limit); it returns the status to refuse with, or None. Consecutive checks share
  one wrapper frame;
* :class:`Observe`: told once, when the call has really ended, how it ended (metrics, access
  log); consecutive observers share one wrapper frame and one outcome.

A concern is a :class:`Concern`: ``compile(method)`` returns its steps for that method, and its
``select`` matcher (``interceptors.selector``) says which methods it is asked about at all.

:class:`ServerChain` holds the ordered concerns and the one per-method cache. It serves in two
ways: the bootstrap compiles every method while registering it (:meth:`ServerChain.registrar`),
so grpc.aio runs no interceptor at all and finds every method in one dict (:class:`MethodTable`); or, for a
server built by hand (tests), it is one ordinary ``grpc.aio.ServerInterceptor``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar, cast

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
from interceptors.outcome import Outcome, adopt_lookup_metadata, outcome_of, outcome_of_error
from interceptors.selector import Matcher, every_method

Serializer: TypeAlias = Callable[[Any], bytes] | None
Deserializer: TypeAlias = Callable[[bytes], Any] | None
OnDone: TypeAlias = Callable[[Context, Outcome, float], None]


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """What a concern may know about a method when it is compiled."""

    name: str  # /pkg.Service/Method
    service: str
    method: str
    request_streaming: bool
    response_streaming: bool
    request_deserializer: Deserializer = None
    response_serializer: Serializer = None

    @classmethod
    def of(cls, name: str, handler: Handler) -> MethodInfo:
        service, _, method = name.lstrip("/").partition("/")
        return cls(
            name,
            service,
            method,
            bool(handler.request_streaming),
            bool(handler.response_streaming),
            handler.request_deserializer,
            handler.response_serializer,
        )

    @property
    def kind(self) -> str:
        """The call kind as go-grpc-prometheus names it."""
        if self.request_streaming:
            return "bidi_stream" if self.response_streaming else "client_stream"
        return "server_stream" if self.response_streaming else "unary"


@dataclass(frozen=True, slots=True)
class Wrap:
    """Wraps the behaviour: ``unary`` for unary-response kinds, ``streaming`` for the others.

    ``raw_request``: the wrapped behaviour is given the request bytes, undecoded (decoding).
    ``serializer``: the response serializer to use instead, given the inner one.
    """

    unary: Callable[[UnaryBehavior], UnaryBehavior] | None = None
    streaming: Callable[[StreamBehavior], StreamBehavior] | None = None
    raw_request: bool = False
    serializer: Callable[[Serializer], Serializer] | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """An admission check: the status to refuse the call with, or None to let it in."""

    check: Callable[[Context], grpc.Status | None]


@dataclass(frozen=True, slots=True)
class Observe:
    """``done(context, outcome, started)`` once per call when it ends; ``start()`` as it starts.

    Both run inside the call's task, so they see its contextvars; both must be quick and must
    not raise. ``started`` is the ``time.perf_counter()`` reading taken as the call started.
    """

    done: OnDone
    start: Callable[[], None] | None = None


Step: TypeAlias = Wrap | Check | Observe


class Concern(ServerInterceptorBase):
    """One concern of the server chain: a small class with explicit options.

    Subclasses implement :meth:`compile`. ``select`` decides which methods the concern is asked
    about (every method unless a subclass or its caller narrows it). A concern can also serve on
    its own as a grpc.aio server interceptor (a one-concern :class:`ServerChain`), which is how
    the tests of a single concern run it; hence every concern's name ends in ``Interceptor``.
    """

    select: Matcher = staticmethod(every_method)
    _alone: ServerChain | None = None

    def compile(self, info: MethodInfo) -> Step | Sequence[Step] | None:
        """What this concern adds to the method ``info`` describes; None when it has nothing to do."""
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        if self._alone is None:
            self._alone = ServerChain([self])
        return await self._alone.intercept_service(continuation, handler_call_details)


def steps_for(concerns: Iterable[Concern], method: MethodInfo) -> list[Step]:
    """Every step the concerns add to ``method``, outermost first."""
    steps: list[Step] = []
    for concern in concerns:
        if not concern.select(method.name):
            continue
        compiled = concern.compile(method)
        if compiled is None:
            continue
        if isinstance(compiled, (Wrap, Check, Observe)):
            steps.append(compiled)
        else:
            steps.extend(compiled)
    return steps


def compile_handler(name: str, handler: Handler, concerns: Iterable[Concern]) -> Handler:
    """``handler`` with the steps of ``concerns`` for method ``name`` built in, in one handler."""
    info = MethodInfo.of(name, handler)
    steps = steps_for(concerns, info)
    if not steps:
        return handler
    streaming = info.response_streaming
    behavior: Any = _behavior(handler)
    if streaming:
        behavior = as_async_generator(behavior)
    deserializer: Deserializer = handler.request_deserializer
    serializer: Serializer = handler.response_serializer
    for group in reversed(_groups(steps)):
        first = group[0]
        if isinstance(first, Wrap):
            wrapper = first.streaming if streaming else first.unary
            if wrapper is not None:
                behavior = wrapper(behavior)
            if first.raw_request:
                deserializer = None
            if first.serializer is not None:
                serializer = first.serializer(serializer)
        elif isinstance(first, Check):
            checks = tuple(cast(Check, step).check for step in group)
            behavior = (_checked_stream if streaming else _checked_unary)(behavior, checks)
        else:
            observers = cast(list[Observe], group)
            behavior = (_observed_stream if streaming else _observed_unary)(behavior, observers)
    return rebuild(handler, behavior, deserializer, serializer)


def _groups(steps: list[Step]) -> list[list[Step]]:
    """Consecutive checks and consecutive observers grouped (one frame each); wraps alone."""
    groups: list[list[Step]] = []
    for step in steps:
        if groups and not isinstance(step, Wrap) and type(groups[-1][0]) is type(step):
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


def _behavior(handler: Handler) -> Any:
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


def rebuild(
    handler: Handler | MethodInfo, behavior: Any, deserializer: Deserializer = None, serializer: Serializer = None
) -> Handler:
    """A handler of the same kind as ``handler`` with another behaviour and (de)serializers.

    The one place handlers are re-made: grpc.aio picks the streaming API by the behaviour's kind.
    """
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, deserializer, serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, deserializer, serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, deserializer, serializer)
    return grpc.unary_unary_rpc_method_handler(behavior, deserializer, serializer)


def as_async_generator(behavior: Any) -> StreamBehavior:
    """Streaming handlers may be async generators or coroutines that ``context.write``; unify them."""
    if inspect.isasyncgenfunction(behavior):
        return cast(StreamBehavior, behavior)

    async def writes_then_ends(request: Any, context: Context) -> Responses:
        # grpc.aio accepts context.write() from inside an async generator (grpc.health.v1's Watch).
        await behavior(request, context)
        return
        yield  # pragma: no cover - makes this an async generator

    return writes_then_ends


async def _refuse(context: Context, status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


def _checked_unary(behavior: UnaryBehavior, checks: tuple[Callable[[Context], grpc.Status | None], ...]) -> Any:
    if len(checks) == 1:
        (check,) = checks

        async def checked_once(request: Any, context: Context) -> Any:
            refusal = check(context)
            if refusal is not None:
                await _refuse(context, refusal)
            return await behavior(request, context)

        return checked_once

    async def checked(request: Any, context: Context) -> Any:
        for one in checks:
            refusal = one(context)
            if refusal is not None:
                await _refuse(context, refusal)
        return await behavior(request, context)

    return checked


def _checked_stream(behavior: StreamBehavior, checks: tuple[Callable[[Context], grpc.Status | None], ...]) -> Any:
    async def checked(request: Any, context: Context) -> Responses:
        for one in checks:
            refusal = one(context)
            if refusal is not None:
                await _refuse(context, refusal)
        async for response in behavior(request, context):
            yield response

    return checked


def _observer_parts(observers: list[Observe]) -> tuple[tuple[Callable[[], None], ...], tuple[OnDone, ...]]:
    starts = tuple(o.start for o in observers if o.start is not None)
    # The innermost observer hears first, as if each had wrapped the handler on its own.
    dones = tuple(o.done for o in reversed(observers))
    return starts, dones


def _observed_unary(behavior: UnaryBehavior, observers: list[Observe]) -> Any:
    starts, dones = _observer_parts(observers)
    clock = time.perf_counter

    async def observed(request: Any, context: Context) -> Any:
        for start in starts:
            start()
        started = clock()
        try:
            response = await behavior(request, context)
        except BaseException as error:
            outcome = outcome_of_error(context, error)
            for done in dones:
                done(context, outcome, started)
            raise
        outcome = outcome_of(context, response)
        for done in dones:
            done(context, outcome, started)
        return response

    return observed


def _observed_stream(behavior: StreamBehavior, observers: list[Observe]) -> Any:
    starts, dones = _observer_parts(observers)
    clock = time.perf_counter

    async def observed(request: Any, context: Context) -> Responses:
        for start in starts:
            start()
        started = clock()
        try:
            async for response in behavior(request, context):
                yield response
        except BaseException as error:
            outcome = outcome_of_error(context, error)
            for done in dones:
                done(context, outcome, started)
            raise
        outcome = outcome_of(context)
        for done in dones:
            done(context, outcome, started)

    return observed


_C = TypeVar("_C", bound=Concern)


class ServerChain(ServerInterceptorBase):
    """The ordered concerns of a server, and the compiled handler of each of its methods.

    Compiled handlers are cached by method and rebuilt only if the inner handler changes (a
    generic handler returns the same object for a method every time). Only methods that
    resolved to a handler are cached, so the cache is bounded by the server's own API.
    """

    def __init__(self, concerns: Sequence[Concern]) -> None:
        self.concerns: tuple[Concern, ...] = tuple(concerns)
        self._compiled: dict[str, tuple[Handler, Handler]] = {}

    def concern(self, kind: type[_C]) -> _C | None:
        """The chain's concern of type ``kind``, if it has one."""
        for concern in self.concerns:
            if isinstance(concern, kind):
                return concern
        return None

    def compile(self, method: str, handler: Handler) -> Handler:
        entry = self._compiled.get(method)
        if entry is not None and entry[0] is handler:
            return entry[1]
        compiled = compile_handler(method, handler, self.concerns)
        self._compiled[method] = (handler, compiled)
        return compiled

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # grpc answers UNIMPLEMENTED
        return self.compile(handler_call_details.method, handler)

    def registrar(self, server: grpc.aio.Server) -> grpc.aio.Server:
        """``server`` as seen by code that registers handlers: each one compiled as it is added.

        Generated ``add_*_to_server`` functions, health and reflection only call the two
        ``add_*`` methods, so the registrar stands in for the server there.
        """
        return cast(grpc.aio.Server, _Registrar(server, self))


class _CompiledGeneric(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # generic only in the stubs
    """A generic handler whose methods are compiled by the chain the first time they are looked up."""

    __slots__ = ("_chain", "_inner")

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], chain: ServerChain) -> None:
        self._inner = inner
        self._chain = chain

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        adopt_lookup_metadata(handler_call_details.invocation_metadata)
        return self._chain.compile(handler_call_details.method, handler)


class MethodTable(grpc.GenericRpcHandler):  # type: ignore[type-arg]  # generic only in the stubs
    """Every method registered through the registrar, compiled at start-up, found by one dict lookup.

    Not grpc's registered-method handlers: grpc.aio (1.85) keeps one pending request per
    registered method and waits on all of them (``asyncio.wait``) for every call it accepts, so
    each registered method costs every call (what that costs the gateway: ``docs/benchmarks.md``).
    This is one generic handler, asked first, and one dict lookup. The lookup is handed the call's
    metadata, which grpc builds for it anyway, and passes it on to the chain
    (``interceptors.outcome.request_metadata``).
    """

    __slots__ = ("handlers",)

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self.handlers.get(handler_call_details.method)
        if handler is not None:
            adopt_lookup_metadata(handler_call_details.invocation_metadata)
        return handler


class _Registrar:
    __slots__ = ("_chain", "_server", "_table")

    def __init__(self, server: grpc.aio.Server, chain: ServerChain) -> None:
        self._server = server
        self._chain = chain
        self._table: MethodTable | None = None

    def _methods(self) -> MethodTable:
        if self._table is None:
            # Registered before any other generic handler: grpc asks them in order.
            self._table = MethodTable()
            self._server.add_generic_rpc_handlers((self._table,))
        return self._table

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self._methods()
        self._server.add_generic_rpc_handlers(tuple(_CompiledGeneric(h, self._chain) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        # Compiled now, at start-up, into the method table (generated add_*_to_server functions
        # call this after add_generic_rpc_handlers; the table, asked first, answers).
        table = self._methods().handlers
        for name, handler in handlers.items():
            path = f"/{service}/{name}"
            table[path] = self._chain.compile(path, handler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
