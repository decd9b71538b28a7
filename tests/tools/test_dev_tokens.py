"""Dev token CLI: keygen writes a key and its JWKS; mint prints tokens the services accept."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from interceptors.jwks import KeySet, TokenVerifier
from tools.dev_tokens import DEV_AUDIENCE, DEV_ISSUER, main


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_keygen_then_mint_yields_a_token_the_jwks_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alg: str
) -> None:
    assert main(["keygen", "--alg", alg, "--out", str(tmp_path), "--kid", "k1"]) == 0
    capsys.readouterr()
    key_file = tmp_path / "signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    jwks = json.loads((tmp_path / "jwks.json").read_text())
    assert jwks["keys"][0]["kid"] == "k1" and "d" not in jwks["keys"][0]

    argv = ["mint", "--key", str(key_file), "--kid", "k1", "--sub", "alice", "--scope", "runs.read"]
    assert main([*argv, "--scope", "runs.write"]) == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(
        keys=KeySet.from_jwks_file(tmp_path / "jwks.json"), issuer=DEV_ISSUER, audience=DEV_AUDIENCE
    )
    verified = verifier.verify(token)
    assert verified.subject == "alice"
    assert verified.scopes == frozenset({"runs.read", "runs.write"})


def test_mint_with_an_hs256_dev_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "dev-secret"
    secret.write_text("d" * 48 + "\n")
    assert main(["mint", "--hs256-secret-file", str(secret), "--kid", "dev", "--sub", "bob"]) == 0
    token = capsys.readouterr().out.strip()
    verifier = TokenVerifier(keys=KeySet.hs256_dev("d" * 48), issuer=DEV_ISSUER, audience=DEV_AUDIENCE)
    assert verifier.verify(token).subject == "bob"
