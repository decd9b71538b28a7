"""Idempotency keys for unary methods, with the semantics payment APIs made standard.

A client names an attempt with an ``idempotency-key`` header (or, for methods that
have one, an AIP-155 ``request_id`` field). For each (caller, method, key):

* the first call to *finish* has its outcome stored, the response or the error status
  with its details, and every retry gets that outcome replayed, marked by the trailer
  ``idempotency-replayed: true``; the handler never runs twice;
* a retry while the first call still runs gets ABORTED with a ``RetryInfo`` delay;
* the same key with a different request is a client bug: INVALID_ARGUMENT;
* transient outcomes (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, cancellation, an expired
  deadline) are not stored, so a retry really runs again;
* keys are scoped to the authenticated caller (``interceptors.identity.current_caller``,
  so this runs inside auth), expire after ``ttl``, and are bounded in length and charset.

Which methods take keys is configuration (``methods``), decided when the server layer
compiles each method; other methods get no idempotency step at all. Streaming methods are
refused (at construction when their descriptor is imported, else when compiled): there is no
single response to replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import grpc
import grpc.aio
import structlog
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2

from interceptors._typing import Context, UnaryBehavior
from interceptors.idempotency import record
from interceptors.idempotency.store import IdempotencyStore
from interceptors.identity import current_caller
from interceptors.layer import Concern, MethodInfo, Wrap
from interceptors.outcome import (
    Metadata,
    Outcome,
    metadata_value,
    outcome_of,
    outcome_of_error,
    replay,
    request_metadata,
)
from rpcstatus.errors import ApiError, error_info, invalid_argument, retry_info, unavailable

HEADER = "idempotency-key"
REPLAYED: Metadata = (("idempotency-replayed", "true"),)
# Outcomes a retry should run again rather than see replayed.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
# A crash is stored like any final answer (its side effects may have happened), as a
# plain INTERNAL: the exception itself is never sent.
_CRASHED = Outcome(grpc.StatusCode.INTERNAL, "internal error")
_REUSED = "this key was already used with a different request; use a new key for a new request"
_KEY_CHARS = "letters, digits and . _ : ~ -"
_KEY_PATTERN = re.compile(r"[A-Za-z0-9._:~-]+")


@dataclass(frozen=True, slots=True)
class IdempotentMethod:
    """A method that takes idempotency keys.

    ``request_field`` names a request field that also carries the key (AIP-155 ``request_id``).
    """

    request_field: str | None = None


class IdempotencyInterceptor(Concern):
    """Run each keyed call at most once per (caller, method, key) and replay its outcome to retries.

    ``methods`` maps full method names (``/package.Service/Method``) to their options.
    ``lease`` bounds how long a running call holds its key: if the server dies mid-call,
    retries may run again after it.
    """

    def __init__(
        self,
        *,
        store: IdempotencyStore,
        methods: Mapping[str, IdempotentMethod],
        ttl: float = 24 * 3600,
        lease: float = 300.0,
        retry_delay: float = 1.0,
        max_key_length: int = 255,
        transient: frozenset[grpc.StatusCode] = TRANSIENT,
        logger: Any | None = None,
    ) -> None:
        if ttl <= 0 or lease <= 0 or retry_delay < 0 or max_key_length < 1:
            raise ValueError("ttl and lease must be positive, retry_delay not negative, max_key_length >= 1")
        for method, options in methods.items():
            _check_method(method, options)
        self._store = store
        self._methods = dict(methods)
        self._ttl = ttl
        self._lease = lease
        self._max_key_length = max_key_length
        self._transient = transient
        self._log = logger if logger is not None else structlog.get_logger("agentmesh.idempotency")
        self._store_down = unavailable(
            "cannot check the idempotency key right now; retry the call with the same key",
            reason="BACKEND_UNAVAILABLE",
            retry_after_s=retry_delay,
        )
        self._in_progress = ApiError(
            grpc.StatusCode.ABORTED,
            "a call with this idempotency key is still running; retry after the delay to get its outcome",
            [error_info("IDEMPOTENCY_IN_PROGRESS"), retry_info(retry_delay)],
        )

    def compile(self, info: MethodInfo) -> Wrap | None:
        method = info.name
        options = self._methods.get(method)
        if options is None:
            return None
        if info.request_streaming or info.response_streaming:
            raise TypeError(f"idempotency keys need a unary method; {method} streams")
        # Records are encoded with the method's own serializer; replays return the stored
        # response bytes, which the serializer then passes through.
        call = _KeyedCall(self, method, options.request_field, info.response_serializer)
        return Wrap(unary=call.wrap, serializer=_passthrough)

    def _validate(self, field: str, key: str) -> ApiError | None:
        if not key:
            return invalid_argument([(field, "must not be empty")])
        if len(key) > self._max_key_length:
            return invalid_argument([(field, f"must be at most {self._max_key_length} characters, got {len(key)}")])
        if _KEY_PATTERN.fullmatch(key) is None:
            return invalid_argument([(field, f"may contain only {_KEY_CHARS} (a UUID is a good key)")])
        return None


class _KeyedCall:
    """The per-method part of the interceptor, resolved once when the method is first wrapped."""

    def __init__(
        self,
        owner: IdempotencyInterceptor,
        method: str,
        request_field: str | None,
        serialize: Callable[[Any], bytes] | None,
    ) -> None:
        self._i = owner
        self._method = method
        self._field = request_field
        self._serialize = serialize
        field = HEADER if request_field is None else f"{HEADER} or {request_field}"
        self._reused = ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid request: {field}: {_REUSED}",
            [
                error_details_pb2.BadRequest(
                    field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=_REUSED)]
                ),
                error_info("IDEMPOTENCY_KEY_REUSED"),
            ],
        )

    def _key(self, request: Any, context: Context) -> tuple[str | None, ApiError | None]:
        header = metadata_value(request_metadata(context), HEADER)
        if isinstance(header, bytes):
            header = header.decode("ascii", "replace")
        field_key: str | None = None
        if self._field is not None:
            field_key = getattr(request, self._field) or None  # proto3: "" means not set
        if header is not None:
            problem = self._i._validate(HEADER, header)
            if problem is not None:
                return None, problem
            if field_key is not None and field_key != header:
                return None, invalid_argument(
                    [(str(self._field), f"differs from the {HEADER} header; send one key, or the same in both")]
                )
            return header, None
        if field_key is not None:
            return field_key, self._i._validate(str(self._field), field_key)
        return None, None

    def wrap(self, behavior: UnaryBehavior) -> UnaryBehavior:
        i = self._i
        store = i._store
        method = self._method

        async def keyed(request: Any, context: Context) -> Any:
            key, problem = self._key(request, context)
            if problem is not None:
                await problem.abort(context)
            if key is None:
                return await behavior(request, context)
            scope = hashlib.sha256(
                b"\0".join((current_caller.get().subject.encode(), method.encode(), key.encode()))
            ).hexdigest()
            body = request.SerializeToString(deterministic=True) if hasattr(request, "SerializeToString") else request
            fingerprint = hashlib.sha256(body).hexdigest()
            owner = os.urandom(12).hex()
            try:
                entry = await store.claim(scope, fingerprint, owner, lease=i._lease)
            except Exception:
                # Without the store the handler might run twice: refuse, and let the client retry.
                i._log.exception("idempotency store unavailable", method=method)
                await i._store_down.abort(context)
            if entry is not None:
                if entry.fingerprint != fingerprint:
                    await self._reused.abort(context)
                if entry.record is None:
                    await i._in_progress.abort(context)
                return await replay(context, record.decode(entry.record), REPLAYED)
            recording = _RecordOnAbort(context, self, scope, owner)
            try:
                response = await behavior(request, cast(Context, recording))
            except BaseException as error:
                if not recording.recorded:
                    outcome = outcome_of_error(context, error)
                    await self._finish(scope, owner, _CRASHED if outcome.unexpected else outcome)
                raise
            await self._finish(scope, owner, outcome_of(context, response))
            return response

        return keyed

    async def _finish(self, scope: str, owner: str, outcome: Outcome) -> None:
        i = self._i
        try:
            # Shielded: a call cancelled again while recording must still record.
            if outcome.code in i._transient:
                await asyncio.shield(i._store.release(scope, owner))
            else:
                await asyncio.shield(
                    i._store.complete(scope, owner, record.encode(outcome, self._serialize), ttl=i._ttl)
                )
        except Exception:
            # The answer still goes out; the key stays claimed until its lease lapses.
            i._log.exception("could not record idempotent outcome", method=self._method)


class _RecordOnAbort:
    """The servicer context, except that ``abort`` records the outcome before the status goes out.

    grpc.aio sends an aborted call's status at once, before the handler's exception unwinds
    through the interceptors; recording only then would let a quick retry find the key still
    "in progress". Everything else is the real context.
    """

    __slots__ = ("_call", "_context", "_owner", "_scope", "recorded")

    def __init__(self, context: Context, call: _KeyedCall, scope: str, owner: str) -> None:
        self._context = context
        self._call = call
        self._scope = scope
        self._owner = owner
        self.recorded = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()) -> NoReturn:
        if not self.recorded:
            self.recorded = True
            await self._call._finish(self._scope, self._owner, Outcome(code, details, tuple(trailing_metadata)))
        await self._context.abort(code, details, trailing_metadata)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _passthrough(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    if serialize is None:
        return None

    def serialize_unless_bytes(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return serialize_unless_bytes


def _check_method(method: str, options: IdempotentMethod) -> None:
    """Refuse, at construction, methods the descriptor pool knows to be streaming or lacking the field."""
    service, _, name = method.lstrip("/").partition("/")
    if not method.startswith("/") or not service or not name:
        raise ValueError(f"method names look like /package.Service/Method, got {method!r}")
    try:
        descriptor = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
    except KeyError:
        return  # not imported yet; wrap() still refuses streaming handlers
    if descriptor.client_streaming or descriptor.server_streaming:
        raise ValueError(f"idempotency keys need a unary method; {method} streams")
    field = options.request_field
    if field is not None:
        found = descriptor.input_type.fields_by_name.get(field)
        if found is None or found.type != found.TYPE_STRING:
            raise ValueError(f"{descriptor.input_type.full_name} has no string field {field!r} to carry the key")
