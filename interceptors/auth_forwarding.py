"""Forward the verified caller's bearer token on outgoing calls (gateway -> agent -> rag).

Every backend runs the auth interceptor itself, so the token is re-verified at each hop;
see ``interceptors.auth`` for why forwarding the original token is the safe choice.
Only a token that auth verified for the current incoming call is forwarded (it comes
from ``current_caller``, never from raw incoming metadata), and an ``authorization``
header the caller set explicitly on the outgoing call wins.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import grpc.aio

from interceptors.auth import AUTHORIZATION_KEY
from interceptors.call_details import details_interceptors
from interceptors.identity import current_caller


class ServiceToken:
    """The service's own bearer token, from a file, for calls made on no caller's behalf.

    A run the agent resumes after a restart has no incoming call and so no caller token; it
    calls RAG as the agent itself. The file is re-read when it changes (tokens are rotated by
    replacing the file), and only on that path: calls made for a caller never touch it.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._version: tuple[int, int, int] | None = None
        self._token: str | None = None

    def get(self) -> str | None:
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return None
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if version != self._version:
            self._token = self._path.read_text().strip() or None
            self._version = version
        return self._token


def with_caller_token(
    details: grpc.aio.ClientCallDetails, *, fallback: ServiceToken | None = None
) -> grpc.aio.ClientCallDetails:
    """``details`` plus ``authorization: Bearer <token>`` of the current verified caller, if any
    (else of the service itself, when it has a ``fallback`` token)."""
    token = current_caller.get().bearer_token
    if token is None and fallback is not None:
        token = fallback.get()
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


def forwarding_interceptors(*, service_token_file: Path | None = None) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding the caller's token (or the service's own) to every call kind on one channel."""
    if service_token_file is None:
        return details_interceptors(with_caller_token)
    fallback = ServiceToken(service_token_file)
    return details_interceptors(lambda details: with_caller_token(details, fallback=fallback))
