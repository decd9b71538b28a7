"""Identity across hops: the verified token travels on, and the next service verifies it again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue

from interceptors.auth import AuthInterceptor, AuthPolicy
from interceptors.auth_forwarding import forwarding_interceptors
from interceptors.jwks import KeySet, TokenVerifier
from tests.interceptors.echo_service import SERVICE, Echo, EchoClient, error_reason, open_channel, requests_of
from tests.interceptors.signing import AUDIENCE, ISSUER, SigningKey

Serve = Callable[..., Awaitable[tuple[Echo, int]]]
RELAY = "test.v1.Relay"


def auth(keys: KeySet, *, audience: str = AUDIENCE) -> AuthInterceptor:
    return AuthInterceptor(
        verifier=TokenVerifier(keys=keys, issuer=ISSUER, audience=audience),
        policy=AuthPolicy(required_scopes={f"/{SERVICE}/*": ["echo.read"], f"/{RELAY}/*": []}),
    )


async def start_relay(backend_port: int, keys: KeySet, *, forward: bool) -> tuple[grpc.aio.Server, int]:
    """A gateway-like server whose handlers call the backend over one channel."""
    channel = open_channel(backend_port, *(forwarding_interceptors() if forward else ()))
    backend = EchoClient(channel)

    async def unary(request: StringValue, context: Any) -> StringValue:
        try:
            reply: StringValue = await backend.unary(request)
        except grpc.aio.AioRpcError as error:  # pass the backend's status through, as a gateway does
            await context.abort(error.code(), error.details() or "", tuple(error.trailing_metadata() or ()))
        return reply

    async def bidi(requests: AsyncIterator[StringValue], context: Any) -> AsyncIterator[StringValue]:
        async for reply in backend.bidi(requests):
            yield reply

    handler = grpc.method_handlers_generic_handler(
        RELAY,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, StringValue.FromString, StringValue.SerializeToString),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, StringValue.FromString, StringValue.SerializeToString),
        },
    )
    server = grpc.aio.server(interceptors=[auth(keys)])
    server.add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def relay(serve: Serve, key_set: KeySet) -> Any:
    servers: list[grpc.aio.Server] = []

    async def start(*, forward: bool = True, backend_audience: str = AUDIENCE) -> grpc.aio.Channel:
        _, backend_port = await serve(interceptors=[auth(key_set, audience=backend_audience)])
        server, port = await start_relay(backend_port, key_set, forward=forward)
        servers.append(server)
        return open_channel(port)

    yield start
    for server in servers:
        await server.stop(None)


def relay_method(channel: grpc.aio.Channel, name: str) -> Any:
    """The relay's ``Unary`` or ``Bidi`` method on ``channel``."""
    kind = channel.stream_stream if name == "Bidi" else channel.unary_unary
    return kind(
        f"/{RELAY}/{name}",
        request_serializer=StringValue.SerializeToString,
        response_deserializer=StringValue.FromString,
    )


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_backend_sees_the_original_caller_through_the_gateway(relay: Any, es256_key: SigningKey) -> None:
    channel = await relay()
    call = relay_method(channel, "Unary")
    reply = await call(StringValue(value="x"), metadata=bearer(es256_key.token("alice", ("echo.read",))))
    assert reply.value == "alice|-:x"
    await channel.close()


async def test_streams_carry_the_caller_too(relay: Any, es256_key: SigningKey) -> None:
    channel = await relay()
    call = relay_method(channel, "Bidi")
    md = bearer(es256_key.token("bob", ("echo.read",)))
    replies = [r.value async for r in call(requests_of("a", "b"), metadata=md)]
    assert replies == ["bob|-:a", "bob|-:b"]
    await channel.close()


async def test_the_backend_checks_scopes_itself(relay: Any, es256_key: SigningKey) -> None:
    channel = await relay()
    call = relay_method(channel, "Unary")
    # The gateway method needs no scope; the backend's does, and the token lacks it.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(StringValue(value="x"), metadata=bearer(es256_key.token("carol")))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    await channel.close()


async def test_the_backend_reverifies_the_token_rather_than_trusting_the_gateway(
    relay: Any, es256_key: SigningKey
) -> None:
    channel = await relay(backend_audience="rag-only")
    call = relay_method(channel, "Unary")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(StringValue(value="x"), metadata=bearer(es256_key.token("alice", ("echo.read",))))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    await channel.close()


async def test_without_forwarding_the_backend_sees_no_token(relay: Any, es256_key: SigningKey) -> None:
    channel = await relay(forward=False)
    call = relay_method(channel, "Unary")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(StringValue(value="x"), metadata=bearer(es256_key.token("alice", ("echo.read",))))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(caught.value) == "TOKEN_MISSING"
    await channel.close()


async def test_calls_on_no_callers_behalf_carry_the_services_own_token(
    serve: Serve, key_set: KeySet, es256_key: SigningKey, tmp_path: Any
) -> None:
    # A run resumed after a restart has no incoming call, hence no caller token to forward.
    _, backend_port = await serve(interceptors=[auth(key_set)])
    token_file = tmp_path / "agent-token"
    channel = open_channel(backend_port, *forwarding_interceptors(service_token_file=token_file))
    client = EchoClient(channel)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.unary(StringValue(value="x"))  # no token file yet: nothing to send
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        token_file.write_text(es256_key.token("agent", ("echo.read",)) + "\n")
        assert (await client.unary(StringValue(value="x"))).value == "agent|-:x"

        rotated = tmp_path / "rotated"
        rotated.write_text(es256_key.token("agent-rotated", ("echo.read",)))
        rotated.replace(token_file)  # rotation replaces the file; the next call uses the new token
        assert (await client.unary(StringValue(value="y"))).value == "agent-rotated|-:y"
    finally:
        await channel.close()
