"""Authentication and authorization of incoming calls: JWT bearer tokens, scopes, mTLS peers.

What a call must present is decided per method by an :class:`AuthPolicy`:

* ``required_scopes``: method pattern -> scopes the token must all carry (``[]`` means
  any valid token). Patterns are ``/pkg.Service/Method``, ``/pkg.Service/*`` or ``*``.
* ``public_methods``: patterns needing no token; by default health and reflection,
  so probes and grpcurl work. When a method matches both lists the more specific
  pattern wins, and on a tie the scopes do (a global ``*`` rule does not capture
  health, an exact rule does).
* anything else is denied (PERMISSION_DENIED) even with a valid token: a new RPC is
  closed until someone decides who may call it.
* ``required_peers``: pattern -> mTLS peer identities allowed (SPIFFE ID, DNS name or
  ``*`` for any verified certificate); needs ``mtls=True``.

Failures: no token, a header that is not ``Bearer <jwt>``, garbage, bad signature,
unknown key, wrong issuer or audience, expired -> UNAUTHENTICATED; valid token lacking a
scope, unlisted method, peer not allowed -> PERMISSION_DENIED. Every rejection carries a
google.rpc ``ErrorInfo`` whose ``reason`` says which (``TOKEN_EXPIRED``, ``SCOPE_MISSING``...).

Which of these checks a method gets is decided once, when the server layer compiles it: a
public method gets no auth work at all (unless mTLS peers are checked), a method outside
the policy a constant refusal. The verified :class:`~interceptors.identity.Caller` is set in
``current_caller`` by the check, inside the call's task, so the inner steps and the handler
see it, and no other call can.

Identity across hops (gateway -> agent -> rag): the verified token is forwarded
unchanged (``interceptors.auth_forwarding``) and every service runs this interceptor
again. That is safe because nothing is trusted on the strength of a header alone: each
hop checks the signature against the issuer's public keys, the issuer, the audience
and the expiry itself, so a forged, altered or stale identity fails at the first
service it reaches, compromised hop or not. Tokens are short-lived and the audience
names the mesh, so a token is useless elsewhere; with mTLS, ``required_peers`` also
pins which workloads may call a backend at all. The alternative, a gateway-signed
internal header, would make the gateway a second token issuer whose key every backend
must trust: more key material, and a gateway compromise would mint any identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import grpc.aio
from pydantic import BaseModel, ConfigDict, field_validator

from interceptors._typing import Context
from interceptors.identity import Caller, current_caller
from interceptors.jwks import TokenRejected, TokenVerifier, VerifiedToken
from interceptors.layer import Check, Concern, MethodInfo
from interceptors.outcome import request_metadata
from interceptors.peer_identity import peer_identity
from interceptors.selector import HEALTH, REFLECTION, Matcher, MethodRules, every_method, validate_pattern
from rpcstatus.details import error_status
from rpcstatus.errors import error_info

AUTHORIZATION_KEY = "authorization"

DEFAULT_PUBLIC_METHODS: tuple[str, ...] = (HEALTH, *REFLECTION)


class AuthPolicy(BaseModel):
    """Who may call which method. Plain data, so it can live in settings files and env."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    required_scopes: dict[str, list[str]] = {}
    public_methods: list[str] = list(DEFAULT_PUBLIC_METHODS)
    required_peers: dict[str, list[str]] = {}

    @field_validator("required_scopes", "required_peers")
    @classmethod
    def _check_mapping_patterns(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for pattern in value:
            validate_pattern(pattern)
        return value

    @field_validator("public_methods")
    @classmethod
    def _check_list_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            validate_pattern(pattern)
        return value


@dataclass(frozen=True, slots=True)
class MethodAccess:
    """The resolved rule for one method."""

    denied: bool = False
    public: bool = False
    scopes: frozenset[str] = frozenset()
    # None: no peer requirement; otherwise the allowed peer identities.
    peers: tuple[str, ...] | None = None


def resolve_access(policy: AuthPolicy, method: str) -> MethodAccess:
    scoped = MethodRules(policy.required_scopes).match(method)
    public = MethodRules(dict.fromkeys(policy.public_methods, True)).match(method)
    peers_match = MethodRules(policy.required_peers).match(method)
    peers = None if peers_match is None else tuple(peers_match[1])
    if scoped is not None and (public is None or scoped[0] >= public[0]):
        return MethodAccess(scopes=frozenset(scoped[1]), peers=peers)
    if public is not None:
        return MethodAccess(public=True, peers=peers)
    return MethodAccess(denied=True, peers=peers)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The raw ``authorization`` value, or None when absent."""
    if metadata:
        for key, value in metadata:
            if key == AUTHORIZATION_KEY:
                return value if isinstance(value, str) else value.decode("latin-1")
    return None


CheckFunction = Callable[[Context], grpc.Status | None]
_MAX_CALLERS = 4096


def _unauthenticated(reason: str, message: str) -> grpc.Status:
    return error_status(grpc.StatusCode.UNAUTHENTICATED, message, error_info(reason))


class AuthInterceptor(Concern):
    """Verifies the bearer token and per-method scopes (and mTLS peers), then sets ``current_caller``."""

    def __init__(
        self, *, verifier: TokenVerifier, policy: AuthPolicy, mtls: bool = False, select: Matcher = every_method
    ) -> None:
        if policy.required_peers and not mtls:
            raise ValueError("required_peers needs mtls=True: without client certificates no peer can match")
        self._verifier = verifier
        self._policy = policy
        self._mtls = mtls
        self.select = select
        # The verified token and Caller of each authorization header seen, built once: a client
        # reuses its token for many calls.
        self._callers: dict[str, tuple[VerifiedToken, Caller]] = {}

    def compile(self, info: MethodInfo) -> list[Check]:
        method = info.name
        access = resolve_access(self._policy, method)
        if access.denied:
            refusal = error_status(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is not listed in the auth policy, so no caller may use it",
                error_info("METHOD_NOT_IN_POLICY", method=method),
            )
            return [Check(lambda _context: refusal)]
        checks: list[Check] = []
        if not access.public:
            checks.append(Check(self._token_check(method, access)))
        if self._mtls:
            checks.append(Check(self._peer_check(method, access.peers)))
        return checks

    def _token_check(self, method: str, access: MethodAccess) -> CheckFunction:
        authenticate = self._authenticate

        def check(context: Context) -> grpc.Status | None:
            # No typing.cast here: its type argument would be built anew on every call.
            outcome = authenticate(method, access, request_metadata(context))
            # Caller, not grpc.Status: an isinstance check against an ABC costs a Python-level call.
            if isinstance(outcome, Caller):
                current_caller.set(outcome)
                return None
            return outcome

        return check

    def _authenticate(
        self, method: str, access: MethodAccess, metadata: Sequence[tuple[str, str | bytes]] | None
    ) -> Caller | grpc.Status:
        header = bearer_token(metadata)
        if header is None:
            return _unauthenticated("TOKEN_MISSING", f"{method} needs an 'authorization: Bearer <token>' header")
        # A client sends the same header on every call: what it verified to is looked up by the
        # header itself, and only expiry, key rotation and this method's scopes are checked again.
        known = self._callers.get(header)
        if known is not None and access.scopes <= known[0].scopes and self._verifier.still_valid(known[0]):
            return known[1]
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _unauthenticated("TOKEN_MALFORMED", "the authorization header must be 'Bearer <token>'")
        try:
            verified = self._verifier.verify(token)
        except TokenRejected as rejected:
            return _unauthenticated(rejected.reason, rejected.message)
        missing = access.scopes - verified.scopes
        if missing:
            listed = " ".join(sorted(missing))
            return error_status(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} needs scope(s) {listed!r}, which the token for {verified.subject!r} lacks",
                error_info("SCOPE_MISSING", method=method, missing_scopes=listed),
            )
        if known is not None and known[0] is verified:
            return known[1]
        caller = Caller(
            subject=verified.subject,
            scopes=verified.scopes,
            claims=dict(verified.claims),
            bearer_token=token,
        )
        if len(self._callers) >= _MAX_CALLERS:
            self._callers.clear()  # bounded like the verifier's cache; rebuilt on the next calls
        self._callers[header] = (verified, caller)
        return caller

    def _peer_check(self, method: str, allowed: tuple[str, ...] | None) -> CheckFunction:
        def check(context: Context) -> grpc.Status | None:
            peer = peer_identity(context)
            if peer is None:
                if allowed is None:
                    return None
                return _unauthenticated(
                    "PEER_CERTIFICATE_MISSING",
                    f"{method} needs an mTLS client certificate with a SPIFFE ID or DNS name",
                )
            if allowed is not None and not peer.matches(allowed):
                return error_status(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"peer {peer.primary!r} may not call {method}",
                    error_info("PEER_NOT_ALLOWED", method=method, peer=peer.primary),
                )
            caller: Caller = current_caller.get()
            current_caller.set(dataclasses.replace(caller, peer_identity=peer.primary))
            return None

        return check
