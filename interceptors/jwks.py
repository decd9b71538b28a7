"""Verification keys and JWT verification for the auth interceptor.

Production keys are asymmetric (RS256 / ES256) and come from a JWKS file, so services
hold only public keys and cannot mint tokens. HS256 exists for local development only
and has to be asked for by name (``KeySet.hs256_dev``). Every key is bound to exactly one
algorithm, and a token's ``alg`` header must equal it: that closes algorithm-confusion
attacks (an HS256 token "signed" with a public RSA key, or ``alg: none``).

Verified tokens are memoised by their exact text until they expire. Signature checks
cost tens of microseconds (ES256 verification dominates a small RPC), while the same
token arrives on every call of a session; a hit still re-checks expiry.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
import structlog

from bounded.lru import LRUCache

log = structlog.get_logger(__name__)

ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "ES256"})
DEV_ALGORITHM = "HS256"


class TokenRejected(Exception):
    """A token failed verification. ``reason`` is a stable ErrorInfo reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class KeySet:
    """Verification keys by ``kid``, each bound to one algorithm."""

    def __init__(self, keys: Mapping[str, jwt.PyJWK]) -> None:
        if not keys:
            raise ValueError("a key set needs at least one key")
        self._keys = dict(keys)

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any]) -> KeySet:
        """Public keys from a JWKS document; each key needs a ``kid`` and RS256 or ES256."""
        keys: dict[str, jwt.PyJWK] = {}
        for entry in jwks.get("keys", []):
            kid = entry.get("kid")
            if not kid:
                raise ValueError("every JWKS key needs a 'kid' so tokens can name their key")
            if "d" in entry:
                raise ValueError(f"JWKS key {kid!r} contains a private key; services need public keys only")
            key = jwt.PyJWK(entry)
            if key.algorithm_name not in ASYMMETRIC_ALGORITHMS:
                raise ValueError(f"JWKS key {kid!r} uses {key.algorithm_name}; only RS256 and ES256 are accepted")
            keys[kid] = key
        return cls(keys)

    @classmethod
    def from_jwks_file(cls, path: str | Path) -> KeySet:
        return cls.from_jwks(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def hs256_dev(cls, secret: str | bytes, *, kid: str = "dev") -> KeySet:
        """A shared-secret key for local development. Never use it across a trust boundary."""
        raw = secret.encode() if isinstance(secret, str) else secret
        if len(raw) < 32:
            raise ValueError("the HS256 dev secret must be at least 32 bytes")
        k = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return cls({kid: jwt.PyJWK({"kty": "oct", "k": k, "kid": kid, "alg": DEV_ALGORITHM})})

    def find(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            # A token without kid is only unambiguous when there is exactly one key.
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    @property
    def kids(self) -> Iterable[str]:
        return self._keys.keys()


class KeySource(Protocol):
    def find(self, kid: str | None) -> jwt.PyJWK | None: ...


class JwksFile:
    """A JWKS file that follows key rotation without a restart.

    At most once per ``min_reload_interval_s`` (driven by lookups, so an idle service does
    no work) the file's mtime is checked and, if it changed, the keys are re-read: a key
    the issuer adds verifies within one interval, and a key it removes stops verifying,
    cached tokens included. No lookup can force a read sooner, so tokens naming invented
    kids cannot make every call touch the disk. The read is synchronous: a JWKS is a few
    hundred bytes and this happens at most once per interval.
    """

    def __init__(
        self, path: str | Path, *, min_reload_interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._path = Path(path)
        self._interval = min_reload_interval_s
        self._clock = clock
        self._mtime_ns = self._path.stat().st_mtime_ns
        self._keys = KeySet.from_jwks_file(self._path)
        self._checked = clock()

    def find(self, kid: str | None) -> jwt.PyJWK | None:
        if self._clock() - self._checked >= self._interval:
            self._reload()
        return self._keys.find(kid)

    def _reload(self) -> None:
        self._checked = self._clock()
        try:
            mtime_ns = self._path.stat().st_mtime_ns
            if mtime_ns == self._mtime_ns:
                return
            self._keys = KeySet.from_jwks_file(self._path)
            self._mtime_ns = mtime_ns
        except (OSError, ValueError) as error:
            # Keep verifying with the keys we have rather than failing every call.
            log.error("could not reload JWKS file; keeping the current keys", path=str(self._path), error=str(error))
            return
        log.info("reloaded JWKS file", path=str(self._path))


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    scopes: frozenset[str]
    expires_at: float
    claims: Mapping[str, Any]
    # The key that verified it; a cached token is re-checked if the key set no longer has it.
    kid: str | None = None
    key: jwt.PyJWK | None = None


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """OAuth ``scope`` (space separated, RFC 8693) or ``scp`` (list or string)."""
    raw = claims.get("scope", claims.get("scp", ""))
    if isinstance(raw, str):
        return frozenset(raw.split())
    if isinstance(raw, list):
        return frozenset(s for s in raw if isinstance(s, str))
    return frozenset()


_REASONS: tuple[tuple[type[jwt.PyJWTError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "TOKEN_EXPIRED", "the bearer token has expired; obtain a new one"),
    (jwt.ImmatureSignatureError, "TOKEN_NOT_YET_VALID", "the bearer token is not valid yet (nbf/iat)"),
    (jwt.InvalidAudienceError, "TOKEN_AUDIENCE", "the bearer token was not issued for this audience"),
    (jwt.InvalidIssuerError, "TOKEN_ISSUER", "the bearer token comes from an untrusted issuer"),
    (jwt.InvalidSignatureError, "TOKEN_SIGNATURE", "the bearer token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "TOKEN_ALGORITHM", "the bearer token's algorithm is not accepted"),
    (jwt.MissingRequiredClaimError, "TOKEN_CLAIMS", "the bearer token lacks a required claim"),
    (jwt.DecodeError, "TOKEN_MALFORMED", "the bearer token is not a well-formed JWT"),
)


def _rejection(error: jwt.PyJWTError) -> TokenRejected:
    for kind, reason, message in _REASONS:
        if isinstance(error, kind):
            return TokenRejected(reason, f"{message} ({error})")
    return TokenRejected("TOKEN_INVALID", f"the bearer token is invalid ({error})")


class TokenVerifier:
    """Verifies signature, issuer, audience, expiry (with leeway) and required claims."""

    def __init__(
        self,
        *,
        keys: KeySource,
        issuer: str,
        audience: str,
        leeway_seconds: float = 10.0,
        cache_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._clock = clock
        self._cache: LRUCache[str, VerifiedToken] = LRUCache(cache_size)
        self._jwt = jwt.PyJWT(options={"require": ["exp", "iat", "sub", "iss", "aud"], "verify_iat": True})

    def still_valid(self, verified: VerifiedToken) -> bool:
        """Whether a token this verifier accepted earlier is still good: not expired, key still trusted.

        The check :meth:`verify` makes of a cached token, without the token's text: a caller that
        keeps what ``verify`` returned per header asks only this on its next calls.
        """
        return verified.expires_at + self._leeway > self._clock() and self._keys.find(verified.kid) is verified.key

    def verify(self, token: str) -> VerifiedToken:
        """The verified token, or ``TokenRejected`` saying why not."""
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at + self._leeway <= self._clock():
                self._cache.pop(token)
                raise TokenRejected("TOKEN_EXPIRED", "the bearer token has expired; obtain a new one")
            if self._keys.find(cached.kid) is cached.key:
                return cached
            self._cache.pop(token)  # its key was rotated out: verify again (and fail)
        verified = self._verify_uncached(token)
        self._cache[token] = verified
        return verified

    def _verify_uncached(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise _rejection(error) from error
        raw_kid = header.get("kid")
        kid = raw_kid if isinstance(raw_kid, str) else None
        key = self._keys.find(kid)
        if key is None:
            raise TokenRejected(
                "TOKEN_KEY_UNKNOWN", f"the bearer token names signing key {raw_kid!r}, which is not trusted"
            )
        try:
            claims = self._jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
            )
        except jwt.PyJWTError as error:
            raise _rejection(error) from error
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise TokenRejected("TOKEN_CLAIMS", "the bearer token's 'sub' claim must be a non-empty string")
        # The clock here and in PyJWT agree, so a token accepted now is cached with its own exp.
        return VerifiedToken(
            subject=subject,
            scopes=scopes_of(claims),
            expires_at=float(claims["exp"]),
            claims=claims,
            kid=kid,
            key=key,
        )
