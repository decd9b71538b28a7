"""Forward the verified caller's bearer token on outgoing calls (gateway -> agent -> rag).

Every backend runs the auth interceptor itself, so the token is re-verified at each hop;
see ``interceptors.auth`` for why forwarding the original token is the safe choice.
Only a token that auth verified for the current incoming call is forwarded (it comes
from ``current_caller``, never from raw incoming metadata), and an ``authorization``
header the caller set explicitly on the outgoing call wins.
"""

from __future__ import annotations

import grpc
import grpc.aio

from interceptors.auth import AUTHORIZATION_KEY
from interceptors.call_details import details_interceptors
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


def forwarding_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding the caller's token to every call kind on one channel."""
    return details_interceptors(with_caller_token)
