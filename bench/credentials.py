"""Credentials for scenarios with auth: an ES256 signing key, its JWKS for the servers, one token.

As in production, servers get only the public JWKS file (`AuthSettings.jwks_file`) and clients a
bearer token, minted with `tools.dev_tokens`. A client reuses its token for every call, as real
clients do until it nears expiry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tools.dev_tokens import generate_private_key, mint, public_jwk

# Every scope the bench's two methods need (CreateRun: runs.write; WatchRun: runs.read).
SCOPES = ("runs.read", "runs.write")


@dataclass(frozen=True)
class Credentials:
    jwks_file: Path
    token: str

    @property
    def header(self) -> tuple[str, str]:
        return ("authorization", f"Bearer {self.token}")


def issue(directory: Path) -> Credentials:
    """A fresh key pair, its JWKS in `directory`, and a token for `SCOPES` valid for an hour."""
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_private_key("ES256")
    jwks_file = directory / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [public_jwk(key, kid="bench")]}))
    token = mint(key=key, algorithm="ES256", subject="bench-client", scopes=SCOPES, kid="bench")
    return Credentials(jwks_file, token)
