"""Who is calling: the authenticated identity, handed from the auth interceptor to handlers.

The auth interceptor sets ``current_caller`` for the duration of one call; handlers,
other interceptors (idempotency scopes its keys by it) and outgoing clients read it.
A contextvar rather than a metadata lookup, so nothing downstream re-parses tokens and
nothing can read an identity that auth did not verify.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller. ``subject`` is the stable id used for scoping (keys, quotas, logs)."""

    subject: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    # Identity of the TLS peer when the connection is mTLS (SPIFFE URI SAN, else DNS SAN).
    peer_identity: str | None = None
    # Claims kept for handlers that need more than subject and scopes (issuer, audience, ...).
    claims: dict[str, object] = field(default_factory=dict, compare=False)
    # The verified bearer token itself, so outgoing calls can forward it for the next hop
    # to verify again (see interceptors/auth_forwarding.py). Never logged: repr=False.
    bearer_token: str | None = field(default=None, repr=False, compare=False)


ANONYMOUS = Caller(subject="anonymous")

current_caller: ContextVar[Caller] = ContextVar("agentmesh_current_caller", default=ANONYMOUS)
