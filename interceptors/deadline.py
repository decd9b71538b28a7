"""Deadlines: every call has one, outgoing calls inherit what is left, expired work is refused.

Server side (:class:`DeadlineInterceptor`):
* a call that arrives without a deadline gets ``default_timeout``, enforced here since
  grpc cannot shorten a call's deadline after the fact;
* a call whose deadline has already passed (it waited in a queue, or arrived late) is
  refused with DEADLINE_EXCEEDED before any work is done;
* the effective deadline is published in :data:`call_deadline` for the handler's
  outgoing calls.

Client side (:class:`DeadlineClientInterceptor`): an outgoing call made while serving
one gets the remaining budget less ``margin`` (time to send the answer back), or its own
shorter timeout; when nothing is left it fails locally instead of starting work that
cannot finish in time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextvars import ContextVar
from typing import Any

import grpc
import grpc.aio

from interceptors._typing import Context, Responses, StreamBehavior, UnaryBehavior
from interceptors.call_details import details_interceptors
from interceptors.layer import Concern, MethodInfo, Wrap
from interceptors.selector import NOT_LONG_LIVED, Matcher

# Absolute deadline of the call being served, on the time.monotonic() clock; None outside a call.
call_deadline: ContextVar[float | None] = ContextVar("agentmesh_call_deadline", default=None)

_EXPIRED = "deadline already passed before the server started the call"


def remaining_budget() -> float | None:
    """Seconds left for the call being served, or None outside a call."""
    deadline = call_deadline.get()
    return None if deadline is None else deadline - time.monotonic()


class _Entry:
    __slots__ = ("deadline", "done", "expired", "task")

    def __init__(self, task: asyncio.Task[Any] | None, deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.done = False
        self.expired = False


class _DefaultDeadlines:
    """The unary calls running on the default deadline, in the order they started; one timer.

    Every such call ends ``timeout`` after it started, so they expire in start order: a queue
    and one timer at its head replace the timer per call of ``asyncio.timeout`` (a heap push
    and a cancelled handle each time, the dearest part of this concern per call).
    """

    __slots__ = ("_calls", "_timeout", "_timer")

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._calls: deque[_Entry] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> _Entry:
        entry = _Entry(asyncio.current_task(loop), loop.time() + self._timeout)
        calls = self._calls
        while calls and calls[0].done:
            calls.popleft()
        calls.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.deadline, self._expire, loop)
        return entry

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now, calls = loop.time(), self._calls
        while calls:
            head = calls[0]
            if head.done:
                calls.popleft()
            elif head.deadline > now:
                self._timer = loop.call_at(head.deadline, self._expire, loop)
                return
            else:
                calls.popleft()
                head.expired = True
                if head.task is not None:
                    head.task.cancel()


class DeadlineInterceptor(Concern):
    """Give calls without a deadline ``default_timeout`` seconds; refuse already-expired calls.

    Only the methods ``select`` matches: by default all but the streams meant to stay open
    (health watches, reflection sessions), which get no default deadline.
    """

    def __init__(self, *, default_timeout: float = 30.0, select: Matcher = NOT_LONG_LIVED) -> None:
        self.select = select
        if default_timeout <= 0:
            raise ValueError("default_timeout must be positive")
        self._default_timeout = default_timeout
        self._defaults = _DefaultDeadlines(default_timeout)
        self._too_slow = (
            f"the call sent no deadline and outran the server default of {default_timeout:g}s; "
            "send a deadline (grpc-timeout) if it needs longer"
        )

    def compile(self, info: MethodInfo) -> Wrap:
        default_timeout = self._default_timeout
        too_slow = self._too_slow
        defaults = self._defaults
        # The serving loop, found once: compiling happens on it (at registration or at the first
        # lookup), and on Python 3.11 get_running_loop() costs a getpid() system call per call.
        try:
            serving_loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            serving_loop = None

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def bounded(request: Any, context: Context) -> Any:
                remaining = context.time_remaining()
                if remaining is not None:
                    if remaining <= 0:
                        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _EXPIRED)
                    # grpc itself cancels the handler when the caller's deadline passes.
                    call_deadline.set(time.monotonic() + remaining)
                    return await behavior(request, context)
                loop = serving_loop
                if loop is None or not loop.is_running():  # compiled on another loop (tests)
                    loop = asyncio.get_running_loop()
                entry = defaults.start(loop)
                call_deadline.set(entry.deadline)  # the loop's clock is time.monotonic()
                try:
                    return await behavior(request, context)
                except asyncio.CancelledError:
                    if not entry.expired:
                        raise  # the client went away
                    if entry.task is not None:
                        entry.task.uncancel()  # this concern's own cancellation, now handled
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, too_slow)
                finally:
                    entry.done = True

            return bounded

        def streaming(behavior: StreamBehavior) -> StreamBehavior:
            async def bounded(request: Any, context: Context) -> Responses:
                remaining = context.time_remaining()
                if remaining is not None:
                    if remaining <= 0:
                        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _EXPIRED)
                    call_deadline.set(time.monotonic() + remaining)
                    async for response in behavior(request, context):
                        yield response
                    return
                loop = asyncio.get_running_loop()
                deadline = loop.time() + default_timeout
                call_deadline.set(time.monotonic() + default_timeout)
                responses = behavior(request, context)
                try:
                    while True:
                        # The timeout must not span a yield: while suspended the generator
                        # is outside its task, so each step is bounded separately.
                        try:
                            async with asyncio.timeout_at(deadline):
                                response = await anext(responses)
                        except StopAsyncIteration:
                            return
                        yield response
                except TimeoutError:
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, too_slow)
                finally:
                    await responses.aclose()

            return bounded

        return Wrap(unary=unary, streaming=streaming)


def _expired(method: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=f"no time left in the caller's deadline to call {method}",
        debug_error_string=None,
    )


class DeadlineBudget:
    """The time an outgoing call made while serving one may take: what is left less ``margin``.

    A plain object, so the gateway's proxy applies the same rule without a client interceptor;
    :func:`deadline_client_interceptors` wraps it for channels that do use interceptors.
    """

    __slots__ = ("_margin",)

    def __init__(self, *, margin: float) -> None:
        if margin < 0:
            raise ValueError("margin must not be negative")
        self._margin = margin

    def timeout(self, method: str, own: float | None) -> float | None:
        """The timeout for an outgoing call to ``method`` whose own timeout is ``own`` (None: none).

        Raises DEADLINE_EXCEEDED (an ``AioRpcError``, as a failed call would) when nothing is left.
        """
        deadline = call_deadline.get()
        if deadline is None:
            return own
        budget = deadline - time.monotonic() - self._margin
        if budget <= 0:
            raise _expired(method)
        return own if own is not None and own <= budget else budget

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if call_deadline.get() is None:
            return details
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        timeout = self.timeout(method, details.timeout)
        if timeout == details.timeout:
            return details
        return details._replace(timeout=timeout)  # type: ignore[attr-defined,no-any-return]


def deadline_client_interceptors(*, margin: float = 0.05) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors (one per call kind) that pass on the remaining budget less ``margin`` seconds."""
    return details_interceptors(DeadlineBudget(margin=margin).details)
