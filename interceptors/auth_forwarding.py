"""Forward the verified caller's bearer token on outgoing calls (gateway -> agent -> rag).

Every backend runs the auth interceptor itself, so the token is re-verified at each hop;
see ``interceptors.auth`` for why forwarding the original token is the safe choice.
Only a token that auth verified for the current incoming call is forwarded (it comes
from ``current_caller``, never from raw incoming metadata), and an ``authorization``
header the caller set explicitly on the outgoing call wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import grpc
import grpc.aio

from interceptors._typing import (
    StreamStreamClientInterceptorBase,
    StreamUnaryClientInterceptorBase,
    UnaryStreamClientInterceptorBase,
    UnaryUnaryClientInterceptorBase,
)
from interceptors.auth import AUTHORIZATION_KEY
from interceptors.identity import current_caller


def with_caller_token(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    """``details`` plus ``authorization: Bearer <token>`` of the current verified caller, if any."""
    token = current_caller.get().bearer_token
    if token is None:
        return details
    existing = details.metadata or ()
    if any(key == AUTHORIZATION_KEY for key, _ in existing):
        return details
    metadata = grpc.aio.Metadata(*existing)
    metadata.add(AUTHORIZATION_KEY, f"Bearer {token}")
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(UnaryUnaryClientInterceptorBase):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(with_caller_token(client_call_details), request)


class _UnaryStream(UnaryStreamClientInterceptorBase):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(with_caller_token(client_call_details), request)


class _StreamUnary(StreamUnaryClientInterceptorBase):
    async def intercept_stream_unary(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(with_caller_token(client_call_details), request_iterator)


class _StreamStream(StreamStreamClientInterceptorBase):
    async def intercept_stream_stream(
        self,
        continuation: Callable[..., Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(with_caller_token(client_call_details), request_iterator)


def forwarding_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding the caller's token to every call kind on one channel."""
    # grpc-stubs types channel interceptors as an opaque placeholder, hence the cast.
    return cast(list[grpc.aio.ClientInterceptor], [_UnaryUnary(), _UnaryStream(), _StreamUnary(), _StreamStream()])
