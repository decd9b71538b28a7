"""mTLS peer identity: SPIFFE ID (else DNS SAN) from the verified client certificate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
import trustme
from google.protobuf.wrappers_pb2 import StringValue

from interceptors.auth import AuthInterceptor, AuthPolicy
from interceptors.jwks import KeySet, TokenVerifier
from interceptors.peer_identity import PeerIdentity, peer_identity_from_auth_context
from tests.interceptors.echo_service import SERVICE, UNARY, Echo, EchoClient, error_reason
from tests.interceptors.signing import AUDIENCE, ISSUER, SigningKey
from tests.interceptors.tls_certs import Leaf, issue

Serve = Callable[..., Awaitable[tuple[Echo, int]]]

GATEWAY = "spiffe://agentmesh.local/ns/default/sa/gateway"
AGENT = "spiffe://agentmesh.local/ns/default/sa/agent"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_leaf(ca: trustme.CA) -> Leaf:
    return issue(ca, uris=["spiffe://agentmesh.local/ns/default/sa/rag"], dns_names=["localhost"])


def server_credentials(ca: trustme.CA, leaf: Leaf, *, require_client_auth: bool) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(leaf.key_pem, leaf.cert_pem)],
        root_certificates=ca.cert_pem.bytes(),
        require_client_auth=require_client_auth,
    )


def channel_to(ca: trustme.CA, port: int, client: Leaf | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        ca.cert_pem.bytes(),
        None if client is None else client.key_pem,
        None if client is None else client.cert_pem,
    )
    return grpc.aio.secure_channel(f"localhost:{port}", credentials)


def mtls_auth(key_set: KeySet) -> AuthInterceptor:
    policy = AuthPolicy(
        required_scopes={f"/{SERVICE}/*": []},
        required_peers={UNARY: [GATEWAY], f"/{SERVICE}/ServerStream": ["*"]},
    )
    verifier = TokenVerifier(keys=key_set, issuer=ISSUER, audience=AUDIENCE)
    return AuthInterceptor(verifier=verifier, policy=policy, mtls=True)


@pytest.fixture
async def mtls_port(serve: Serve, ca: trustme.CA, server_leaf: Leaf, key_set: KeySet) -> AsyncIterator[int]:
    _, port = await serve(
        interceptors=[mtls_auth(key_set)],
        server_credentials=server_credentials(ca, server_leaf, require_client_auth=True),
    )
    yield port


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_spiffe_id_of_the_client_certificate_reaches_the_handler(
    mtls_port: int, ca: trustme.CA, es256_key: SigningKey
) -> None:
    gateway = issue(ca, uris=[GATEWAY], dns_names=["gateway.agentmesh.local"], common_name="gw")
    async with channel_to(ca, mtls_port, gateway) as channel:
        reply = await EchoClient(channel).unary(StringValue(value="x"), metadata=bearer(es256_key.token()))
    assert reply.value == f"alice|{GATEWAY}:x"


async def test_dns_san_is_the_identity_when_there_is_no_spiffe_id(
    mtls_port: int, ca: trustme.CA, es256_key: SigningKey
) -> None:
    legacy = issue(ca, dns_names=["legacy.agentmesh.local"])
    async with channel_to(ca, mtls_port, legacy) as channel:
        replies = [
            r.value
            async for r in EchoClient(channel).server_stream(StringValue(value="s"), metadata=bearer(es256_key.token()))
        ]
    assert replies[0] == "alice|legacy.agentmesh.local:s:0"


async def test_peer_not_in_the_allowed_list_is_permission_denied(
    mtls_port: int, ca: trustme.CA, es256_key: SigningKey
) -> None:
    agent = issue(ca, uris=[AGENT])
    async with channel_to(ca, mtls_port, agent) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await EchoClient(channel).unary(StringValue(value="x"), metadata=bearer(es256_key.token()))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(caught.value) == "PEER_NOT_ALLOWED"


async def test_mtls_server_refuses_a_client_without_certificate_at_the_handshake(
    mtls_port: int, ca: trustme.CA, es256_key: SigningKey
) -> None:
    async with channel_to(ca, mtls_port, None) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await EchoClient(channel).unary(StringValue(value="x"), metadata=bearer(es256_key.token()))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_missing_client_certificate_is_unauthenticated_where_a_peer_is_required(
    serve: Serve, ca: trustme.CA, server_leaf: Leaf, key_set: KeySet, es256_key: SigningKey
) -> None:
    # Server-only TLS: the connection is encrypted but the client is anonymous.
    _, port = await serve(
        interceptors=[mtls_auth(key_set)],
        server_credentials=server_credentials(ca, server_leaf, require_client_auth=False),
    )
    async with channel_to(ca, port, None) as channel:
        echo = EchoClient(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await echo.unary(StringValue(value="x"), metadata=bearer(es256_key.token()))
        # Methods without a peer requirement still work over server-only TLS.
        gathered = await echo.client_stream(_one("a"), metadata=bearer(es256_key.token()))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(caught.value) == "PEER_CERTIFICATE_MISSING"
    assert gathered.value == "alice|-:a"


async def _one(value: str) -> AsyncIterator[StringValue]:
    yield StringValue(value=value)


def test_spiffe_id_wins_over_dns_and_common_name_is_ignored() -> None:
    context: dict[str, Any] = {
        "peer_spiffe_id": [GATEWAY.encode()],
        "peer_dns": [b"gw.local", b"gw2.local"],
        "x509_common_name": [b"gw"],
    }
    peer = peer_identity_from_auth_context(context)
    assert peer == PeerIdentity(spiffe_id=GATEWAY, dns_names=("gw.local", "gw2.local"))
    assert peer.primary == GATEWAY
    assert peer.matches(["gw2.local"]) and peer.matches(["*"]) and not peer.matches([AGENT])
    assert peer_identity_from_auth_context({"x509_common_name": [b"gw"]}) is None
