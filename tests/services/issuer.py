"""A token issuer for tests of the real services with auth on: ES256 tokens and the JWKS that verifies them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from runtime.security import AuthSettings
from tools.dev_tokens import generate_private_key, mint, public_jwk


@dataclass(frozen=True)
class Issuer:
    private_key: Any
    kid: str

    @classmethod
    def generate(cls, kid: str) -> Self:
        return cls(generate_private_key("ES256"), kid)

    def token(self, subject: str, *scopes: str) -> str:
        return mint(key=self.private_key, algorithm="ES256", subject=subject, scopes=scopes, kid=self.kid)

    def bearer(self, subject: str, *scopes: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token(subject, *scopes)}"),)

    def auth_settings(self, directory: Path) -> AuthSettings:
        """Settings of a service that trusts this issuer, its JWKS written to ``directory``."""
        jwks = directory / "jwks.json"
        jwks.write_text(json.dumps({"keys": [public_jwk(self.private_key, kid=self.kid)]}))
        return AuthSettings(jwks_file=jwks)
