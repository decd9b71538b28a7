"""Shared fixtures for interceptor tests: signing keys, tokens, an echo server factory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2

from interceptors.jwks import KeySet
from interceptors.status_details import find_detail
from tests.interceptors.echo_service import Echo, start_server
from tools.dev_tokens import DEV_AUDIENCE, DEV_ISSUER, generate_private_key, mint, public_jwk


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


@pytest.fixture(scope="session")
def es256_key() -> SigningKey:
    return SigningKey("es-1", "ES256", generate_private_key("ES256"))


@pytest.fixture(scope="session")
def rs256_key() -> SigningKey:
    return SigningKey("rs-1", "RS256", generate_private_key("RS256"))


@pytest.fixture(scope="session")
def jwks_document(es256_key: SigningKey, rs256_key: SigningKey) -> dict[str, Any]:
    return {
        "keys": [
            public_jwk(es256_key.private_key, kid=es256_key.kid),
            public_jwk(rs256_key.private_key, kid=rs256_key.kid),
        ]
    }


@pytest.fixture
def jwks_file(tmp_path: Any, jwks_document: dict[str, Any]) -> Any:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks_document))
    return path


@pytest.fixture
def key_set(jwks_file: Any) -> KeySet:
    return KeySet.from_jwks_file(jwks_file)


ISSUER = DEV_ISSUER
AUDIENCE = DEV_AUDIENCE


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[Echo, int]]]]:
    """``await serve(interceptors=[...])`` -> (echo servicer, port); servers stop at teardown."""
    servers: list[grpc.aio.Server] = []

    async def start(*, echo: Echo | None = None, **options: Any) -> tuple[Echo, int]:
        echo = echo or Echo()
        server, port = await start_server(echo, **options)
        servers.append(server)
        return echo, port

    yield start
    for server in servers:
        await server.stop(None)


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    info = find_detail(error, error_details_pb2.ErrorInfo)
    return None if info is None else str(info.reason)
