"""Signing keys that play the token issuer in interceptor tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tools.dev_tokens import DEV_AUDIENCE, DEV_ISSUER, mint

ISSUER = DEV_ISSUER
AUDIENCE = DEV_AUDIENCE


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: Any

    def token(self, subject: str = "alice", scopes: tuple[str, ...] = (), **overrides: Any) -> str:
        return mint(
            key=self.private_key,
            algorithm=self.algorithm,
            subject=subject,
            scopes=scopes,
            kid=self.kid,
            **overrides,
        )
