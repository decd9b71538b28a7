"""How a call really ended, read from inside its handler.

A grpc.aio ``ServerInterceptor`` only gets to look at the handler *lookup*; the call's
final status is decided later, inside the handler (grpc issue 24605). So the concerns that
care about the outcome (idempotency, access logs, metrics) wrap the handler's behaviour
(``interceptors.layer``), and read the outcome with this module:

* :func:`outcome_of` / :func:`outcome_of_error` read the final status the way grpc
  will send it: ``context.set_code``/``set_details``/``set_trailing_metadata``,
  ``context.abort`` (``AbortError``), a cancelled call (``CancelledError``, told apart
  from an expired deadline by the remaining time) and unexpected exceptions.
* :func:`replay` ends a call with a previously recorded outcome (short-circuit).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any, NamedTuple, TypeAlias

import grpc
import grpc.aio

from interceptors._typing import Context

MetadataValue: TypeAlias = str | bytes
Metadata: TypeAlias = tuple[tuple[str, MetadataValue], ...]

_NO_METADATA: Metadata = ()


class Outcome(NamedTuple):
    """How a call ended: the status grpc sends, plus the unary response when there is one.

    A named tuple: one is made per call, and a frozen dataclass costs several times as much.
    """

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


_OK = grpc.StatusCode.OK
# Outcome's own constructor is a Python function; tuple.__new__ makes the same object in C.
_new_tuple = tuple.__new__


def outcome_of(context: Context, response: Any = None) -> Outcome:
    """The outcome of a handler that returned normally (it may still have set a code)."""
    code = context.code()
    sent = context.trailing_metadata()
    trailing = tuple(sent) if sent else _NO_METADATA
    if code is None or code is _OK:
        return _new_tuple(Outcome, (_OK, context.details() or "", trailing, response, None))
    return _new_tuple(Outcome, (code, context.details() or "", trailing, None, None))


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


# The invocation metadata of the call being served: grpc.aio rebuilds the tuple on every
# ``context.invocation_metadata()`` (its cost, measured by ``bench.instructions``, is in
# docs/benchmarks.md), and tracing, auth and idempotency all read it. Keyed by the call's context, or by _LOOKUP when
# the method lookup of this very call handed it over (grpc.aio looks the handler up and runs
# it in the call's own task, so a value set during the lookup is this call's).
_LOOKUP = object()
_request_metadata: ContextVar[tuple[object, Any] | None] = ContextVar("agentmesh_request_metadata", default=None)


def adopt_lookup_metadata(metadata: Any) -> None:
    """Keep the metadata grpc built for this call's method lookup, so no concern builds it again."""
    if metadata:
        _request_metadata.set((_LOOKUP, metadata))


def request_metadata(context: Context) -> Any:
    """``context.invocation_metadata()``, read once per call (grpc.aio runs each call in its own task)."""
    cached = _request_metadata.get()
    if cached is not None and (cached[0] is context or cached[0] is _LOOKUP):
        return cached[1]
    metadata = context.invocation_metadata()
    _request_metadata.set((context, metadata))
    return metadata


def metadata_value(metadata: Iterable[Any] | None, key: str) -> MetadataValue | None:
    """The first value of ``key`` in invocation metadata (keys arrive lower-cased)."""
    if metadata:
        for item in metadata:
            if item[0] == key:
                value: MetadataValue = item[1]
                return value
    return None
