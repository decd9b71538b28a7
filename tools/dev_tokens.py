"""Dev credentials for local runs: signing keys + JWKS, and tokens signed with them.

    python -m tools.dev_tokens keygen --alg ES256 --out var/keys
        writes var/keys/signing-key.pem (private, 0600) and var/keys/jwks.json (public)
    python -m tools.dev_tokens mint --key var/keys/signing-key.pem --kid <kid> --sub alice \
        --scope runs.read --scope runs.write
    python -m tools.dev_tokens mint --hs256-secret-file var/keys/dev-secret --sub alice --scope runs.read

Services load only ``jwks.json``; the private key stays with whoever plays the issuer.
The issuer and audience defaults match the services' dev settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from runtime.security import DEFAULT_AUDIENCE as DEV_AUDIENCE
from runtime.security import DEFAULT_ISSUER as DEV_ISSUER


def generate_private_key(alg: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unsupported algorithm {alg!r}; use ES256 or RS256")


def public_jwk(private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, *, kid: str) -> dict[str, Any]:
    """The public half as a JWK with ``kid``, ``alg`` and ``use`` set."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
        jwk["alg"] = "ES256"
    else:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
        jwk["alg"] = "RS256"
    jwk.update(kid=kid, use="sig")
    return jwk


def private_key_pem(private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def mint(
    *,
    key: Any,
    algorithm: str,
    subject: str,
    scopes: Sequence[str] = (),
    kid: str | None = None,
    issuer: str = DEV_ISSUER,
    audience: str = DEV_AUDIENCE,
    ttl_seconds: int = 3600,
    now: float | None = None,
    extra_claims: dict[str, Any] | None = None,
) -> str:
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(scopes),
        **(extra_claims or {}),
    }
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def write_key_pair(out: Path, *, alg: str, kid: str | None = None) -> tuple[Path, Path, str]:
    """A new signing key (``signing-key.pem``, mode 0600) and its public JWKS (``jwks.json``) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    key = generate_private_key(alg)
    kid = kid or f"dev-{alg.lower()}-{uuid.uuid4().hex[:8]}"
    key_path, jwks_path = out / "signing-key.pem", out / "jwks.json"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_key_pem(key))
    jwks_path.write_text(json.dumps({"keys": [public_jwk(key, kid=kid)]}, indent=2) + "\n")
    return key_path, jwks_path, kid


def _keygen(args: argparse.Namespace) -> int:
    key_path, jwks_path, kid = write_key_pair(Path(args.out), alg=args.alg, kid=args.kid)
    print(json.dumps({"kid": kid, "private_key": str(key_path), "jwks": str(jwks_path)}))
    return 0


def _mint(args: argparse.Namespace) -> int:
    if args.hs256_secret_file:
        key: Any = Path(args.hs256_secret_file).read_bytes().strip()
        algorithm = "HS256"
    else:
        pem = Path(args.key).read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
    token = mint(
        key=key,
        algorithm=algorithm,
        subject=args.sub,
        scopes=args.scope,
        kid=args.kid,
        issuer=args.iss,
        audience=args.aud,
        ttl_seconds=args.ttl,
    )
    print(token)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dev_tokens", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    keygen = commands.add_parser("keygen", help="write a signing key and its public JWKS")
    keygen.add_argument("--alg", choices=["ES256", "RS256"], default="ES256")
    keygen.add_argument("--kid", help="key id (default: generated)")
    keygen.add_argument("--out", default="var/keys", help="directory for signing-key.pem and jwks.json")
    keygen.set_defaults(run=_keygen)

    minting = commands.add_parser("mint", help="print a signed token")
    source = minting.add_mutually_exclusive_group(required=True)
    source.add_argument("--key", help="PEM private key from keygen (ES256/RS256)")
    source.add_argument("--hs256-secret-file", help="shared secret file (dev only, HS256)")
    minting.add_argument("--kid", help="key id to put in the header (the kid printed by keygen)")
    minting.add_argument("--sub", required=True, help="subject (the caller's stable id)")
    minting.add_argument("--scope", action="append", default=[], help="a scope; repeat for more")
    minting.add_argument("--iss", default=DEV_ISSUER)
    minting.add_argument("--aud", default=DEV_AUDIENCE)
    minting.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    minting.set_defaults(run=_mint)

    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
