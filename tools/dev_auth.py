"""Local credentials for `make run`: an ES256 signing key, its JWKS, and a token for the demo user.

`make run` serves with auth on, as production does: every service verifies bearer tokens
against `var/keys/jwks.json`. The private key never leaves `var/keys` (gitignored, mode 0600).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from runtime.security import MESH_REQUIRED_SCOPES
from tools.dev_tokens import mint, write_key_pair

DEV_SUBJECT = "dev-user"


@dataclass(frozen=True)
class DevAuth:
    jwks_file: Path
    token: str
    token_file: Path
    # The agent's own token (documents.read), for runs it resumes after a restart.
    agent_token_file: Path
    # The console's (runs.read only): it lists and watches runs, and can change nothing.
    console_token_file: Path

    def service_auth_json(self) -> str:
        """The value of `AGENTMESH_<SERVICE>_AUTH` for a service that verifies these tokens."""
        return json.dumps({"jwks_file": str(self.jwks_file)})


def ensure_dev_auth(keys_dir: Path, *, ttl_seconds: int = 12 * 3600) -> DevAuth:
    """Create the key pair once; mint a fresh token (every scope the mesh knows) on every call."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    key_path, jwks_path = keys_dir / "signing-key.pem", keys_dir / "jwks.json"
    if not (key_path.exists() and jwks_path.exists()):
        write_key_pair(keys_dir, alg="ES256")
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    private_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    scopes = sorted({scope for needed in MESH_REQUIRED_SCOPES.values() for scope in needed})

    def write_token(name: str, subject: str, scopes: list[str]) -> tuple[str, Path]:
        token = mint(
            key=private_key, algorithm="ES256", subject=subject, scopes=scopes, kid=kid, ttl_seconds=ttl_seconds
        )
        path = keys_dir / name
        path.write_text(token + "\n")
        return token, path

    token, token_file = write_token("dev-token", DEV_SUBJECT, scopes)
    _, agent_token_file = write_token("agent-token", "agentmesh-agent", ["documents.read"])
    _, console_token_file = write_token("console-token", "agentmesh-console", ["runs.read"])
    return DevAuth(
        jwks_file=jwks_path.resolve(),
        token=token,
        token_file=token_file,
        agent_token_file=agent_token_file.resolve(),
        console_token_file=console_token_file.resolve(),
    )
