"""Fixtures for the access-control interceptor tests: issuer keys, their JWKS, an echo server factory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from interceptors.jwks import KeySet
from tests.interceptors.echo_service import Echo, serving
from tests.interceptors.signing import SigningKey
from tools.dev_tokens import generate_private_key, public_jwk


@pytest.fixture(scope="session")
def es256_key() -> SigningKey:
    return SigningKey("es-1", "ES256", generate_private_key("ES256"))


@pytest.fixture(scope="session")
def rs256_key() -> SigningKey:
    return SigningKey("rs-1", "RS256", generate_private_key("RS256"))


@pytest.fixture
def jwks_file(tmp_path: Path, es256_key: SigningKey, rs256_key: SigningKey) -> Path:
    path = tmp_path / "jwks.json"
    keys = [public_jwk(k.private_key, kid=k.kid) for k in (es256_key, rs256_key)]
    path.write_text(json.dumps({"keys": keys}))
    return path


@pytest.fixture
def key_set(jwks_file: Path) -> KeySet:
    return KeySet.from_jwks_file(jwks_file)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[Echo, int]]]]:
    """``await serve(interceptors=[...])`` -> (echo servicer, port); servers stop at teardown."""
    async with serving() as start:
        yield start
