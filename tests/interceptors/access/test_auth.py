"""Auth interceptor: bearer JWTs, per-method scopes, deny by default, public health/reflection."""

from __future__ import annotations

import contextvars
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from interceptors.auth import AuthInterceptor, AuthPolicy, resolve_access
from interceptors.jwks import JwksFile, KeySet, KeySource, TokenRejected, TokenVerifier
from interceptors.layer import Check, MethodInfo
from tests.interceptors.echo_service import SERVICE, Echo, EchoClient, error_reason, requests_of
from tests.interceptors.signing import AUDIENCE, ISSUER, SigningKey
from tools.dev_tokens import generate_private_key, public_jwk

Serve = Callable[..., Awaitable[tuple[Echo, int]]]

POLICY = AuthPolicy(
    required_scopes={
        f"/{SERVICE}/*": ["echo.read"],
        f"/{SERVICE}/Bidi": ["echo.read", "echo.write"],
    }
)


def verifier(keys: KeySource, **options: Any) -> TokenVerifier:
    return TokenVerifier(keys=keys, issuer=ISSUER, audience=AUDIENCE, **options)


@pytest.fixture
async def client(serve: Serve, key_set: KeySet) -> Any:
    _, port = await serve(interceptors=[AuthInterceptor(verifier=verifier(key_set), policy=POLICY)])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield EchoClient(channel), channel


def mallory_claims() -> dict[str, Any]:
    """Claims that would pass every check: only how the token is signed can reject it."""
    now = int(time.time())
    return {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 60}


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def rejected(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_valid_es256_token_reaches_handler_as_current_caller(client: Any, es256_key: SigningKey) -> None:
    echo, _ = client
    reply = await echo.unary(StringValue(value="hi"), metadata=bearer(es256_key.token(scopes=("echo.read",))))
    assert reply.value == "alice|-:hi"


async def test_valid_rs256_token_is_accepted(client: Any, rs256_key: SigningKey) -> None:
    echo, _ = client
    reply = await echo.unary(StringValue(value="x"), metadata=bearer(rs256_key.token("bob", ("echo.read",))))
    assert reply.value == "bob|-:x"


async def test_caller_reaches_every_streaming_kind(client: Any, es256_key: SigningKey) -> None:
    echo, _ = client
    md = bearer(es256_key.token(scopes=("echo.read", "echo.write")))
    streamed = [r.value async for r in echo.server_stream(StringValue(value="s"), metadata=md)]
    assert streamed == ["alice|-:s:0", "alice|-:s:1", "alice|-:s:2"]
    gathered = await echo.client_stream(requests_of("a", "b"), metadata=md)
    assert gathered.value == "alice|-:a,b"
    bidi = [r.value async for r in echo.bidi(requests_of("p", "q"), metadata=md)]
    assert bidi == ["alice|-:p", "alice|-:q"]


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "TOKEN_MISSING"),
        ((("authorization", "Bearer not-a-jwt"),), "TOKEN_MALFORMED"),
        ((("authorization", "Bearer a.b.c"),), "TOKEN_MALFORMED"),
        ((("authorization", "Basic YWxpY2U6c2VjcmV0"),), "TOKEN_MALFORMED"),
        ((("authorization", "Bearer"),), "TOKEN_MALFORMED"),
    ],
)
async def test_missing_or_garbage_token_is_unauthenticated(client: Any, metadata: Any, reason: str) -> None:
    echo, _ = client
    error = await rejected(echo.unary(StringValue(value="x"), metadata=metadata))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == reason


async def test_streaming_calls_without_token_are_unauthenticated(client: Any) -> None:
    echo, _ = client
    with pytest.raises(grpc.aio.AioRpcError) as stream_error:
        async for _ in echo.server_stream(StringValue(value="x")):
            pass
    assert stream_error.value.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rejected(echo.client_stream(requests_of("a")))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as bidi_error:
        async for _ in echo.bidi(requests_of("a")):
            pass
    assert bidi_error.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(bidi_error.value) == "TOKEN_MISSING"


async def test_expired_token_is_unauthenticated(client: Any, es256_key: SigningKey) -> None:
    echo, _ = client
    stale = es256_key.token(scopes=("echo.read",), now=time.time() - 3600, ttl_seconds=60)
    error = await rejected(echo.unary(StringValue(value="x"), metadata=bearer(stale)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "TOKEN_EXPIRED"
    assert "expired" in (error.details() or "")


async def test_token_expired_within_leeway_is_still_accepted(client: Any, es256_key: SigningKey) -> None:
    echo, _ = client
    just_expired = es256_key.token(scopes=("echo.read",), now=time.time() - 62, ttl_seconds=60)
    reply = await echo.unary(StringValue(value="x"), metadata=bearer(just_expired))
    assert reply.value.startswith("alice")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"audience": "some-other-api"}, "TOKEN_AUDIENCE"),
        ({"issuer": "https://evil.example"}, "TOKEN_ISSUER"),
    ],
)
async def test_wrong_audience_or_issuer_is_unauthenticated(
    client: Any, es256_key: SigningKey, overrides: dict[str, str], reason: str
) -> None:
    echo, _ = client
    token = es256_key.token(scopes=("echo.read",), **overrides)
    error = await rejected(echo.unary(StringValue(value="x"), metadata=bearer(token)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == reason


async def test_token_signed_by_wrong_key_is_unauthenticated(client: Any, es256_key: SigningKey) -> None:
    echo, _ = client
    impostor = SigningKey(es256_key.kid, "ES256", generate_private_key("ES256"))
    error = await rejected(echo.unary(StringValue(value="x"), metadata=bearer(impostor.token(scopes=("echo.read",)))))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "TOKEN_SIGNATURE"


async def test_token_naming_an_unknown_key_is_unauthenticated(client: Any) -> None:
    echo, _ = client
    stranger = SigningKey("who-knows", "ES256", generate_private_key("ES256"))
    error = await rejected(echo.unary(StringValue(value="x"), metadata=bearer(stranger.token(scopes=("echo.read",)))))
    assert error_reason(error) == "TOKEN_KEY_UNKNOWN"


async def test_hs256_token_is_refused_by_a_jwks_verifier(client: Any, es256_key: SigningKey) -> None:
    # Algorithm confusion: an HS256 token claiming the ES256 key's kid must not verify.
    echo, _ = client
    forged = jwt.encode(mallory_claims(), "x" * 32, algorithm="HS256", headers={"kid": es256_key.kid})
    error = await rejected(echo.unary(StringValue(value="x"), metadata=bearer(forged)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(error) == "TOKEN_ALGORITHM"


async def test_unsigned_alg_none_token_is_refused(client: Any, es256_key: SigningKey) -> None:
    echo, _ = client
    unsigned = jwt.encode(mallory_claims(), "", algorithm="none", headers={"kid": es256_key.kid})
    error = await rejected(echo.unary(StringValue(value="x"), metadata=bearer(unsigned)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_missing_scope_is_permission_denied(client: Any, es256_key: SigningKey) -> None:
    echo, _ = client
    md = bearer(es256_key.token(scopes=("echo.read",)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in echo.bidi(requests_of("a"), metadata=md):
            pass
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(caught.value) == "SCOPE_MISSING"
    assert "echo.write" in (caught.value.details() or "")


async def test_unlisted_method_is_denied_even_with_a_valid_token(client: Any, es256_key: SigningKey) -> None:
    echo, _ = client
    md = bearer(es256_key.token(scopes=("echo.read",)))
    error = await rejected(echo.other(StringValue(value="x"), metadata=md))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(error) == "METHOD_NOT_IN_POLICY"


async def test_unknown_method_is_unimplemented_not_an_auth_error(client: Any) -> None:
    _, channel = client
    call = channel.unary_unary("/test.v1.Nope/Missing")
    error = await rejected(call(b""))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_health_is_public_by_default(client: Any) -> None:
    _, channel = client
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_requires_a_token_when_configured_by_exact_rule(serve: Serve, key_set: KeySet) -> None:
    policy = AuthPolicy(required_scopes={"/grpc.health.v1.Health/Check": []})
    _, port = await serve(interceptors=[AuthInterceptor(verifier=verifier(key_set), policy=policy)])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        error = await rejected(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


def test_a_global_rule_does_not_capture_public_health_but_an_exact_one_does() -> None:
    policy = AuthPolicy(required_scopes={"*": ["x"]})
    assert resolve_access(policy, "/grpc.health.v1.Health/Check").public
    assert resolve_access(policy, "/a.B/C").scopes == frozenset({"x"})
    private = AuthPolicy(required_scopes={"/grpc.health.v1.Health/*": []})
    assert not resolve_access(private, "/grpc.health.v1.Health/Watch").public


def test_nothing_is_public_when_public_methods_is_emptied() -> None:
    policy = AuthPolicy(public_methods=[])
    assert resolve_access(policy, "/grpc.health.v1.Health/Check").denied


async def test_hs256_dev_keys_verify_dev_tokens(serve: Serve) -> None:
    secret = "s" * 40
    keys = KeySet.hs256_dev(secret)
    _, port = await serve(interceptors=[AuthInterceptor(verifier=verifier(keys), policy=POLICY)])
    token = SigningKey("dev", "HS256", secret.encode()).token("dev-user", ("echo.read",))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await EchoClient(channel).unary(StringValue(value="x"), metadata=bearer(token))
    assert reply.value == "dev-user|-:x"


def test_short_hs256_dev_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        KeySet.hs256_dev("short")


def test_jwks_with_private_or_symmetric_keys_is_refused(es256_key: SigningKey) -> None:
    private = jwt.algorithms.ECAlgorithm.to_jwk(es256_key.private_key, as_dict=True)
    with pytest.raises(ValueError, match="private key"):
        KeySet.from_jwks({"keys": [{**private, "kid": "k"}]})
    with pytest.raises(ValueError, match="only RS256 and ES256"):
        KeySet.from_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0", "kid": "k", "alg": "HS256"}]})


@pytest.mark.parametrize("pattern", ["Echo/Unary", "/test.v1.Echo", "/test.v1.*/Unary", "/a/b/c", "/a.B/Un*"])
def test_malformed_method_patterns_are_rejected(pattern: str) -> None:
    with pytest.raises(ValidationError):
        AuthPolicy(required_scopes={pattern: []})


def test_required_peers_without_mtls_is_a_configuration_error(key_set: KeySet) -> None:
    policy = AuthPolicy(required_scopes={"*": []}, required_peers={"*": ["*"]})
    with pytest.raises(ValueError, match="mtls=True"):
        AuthInterceptor(verifier=verifier(key_set), policy=policy)


def test_cached_token_is_rejected_once_it_expires(es256_key: SigningKey, key_set: KeySet) -> None:
    now = [time.time()]
    checker = verifier(key_set, leeway_seconds=0, clock=lambda: now[0])
    token = es256_key.token(ttl_seconds=30)
    assert checker.verify(token).subject == "alice"
    now[0] += 31
    with pytest.raises(Exception, match="expired"):
        checker.verify(token)


@pytest.mark.parametrize("with_second_key", [False, True])
def test_a_verified_token_is_served_from_the_cache(
    es256_key: SigningKey, rs256_key: SigningKey, with_second_key: bool
) -> None:
    keys = [es256_key, rs256_key] if with_second_key else [es256_key]
    checker = verifier(KeySet.from_jwks({"keys": [public_jwk(k.private_key, kid=k.kid) for k in keys]}))
    token = es256_key.token()

    first = checker.verify(token)

    # The same object back: no second signature check (one costs about as much as a whole call).
    assert checker.verify(token) is first


def test_the_token_cache_is_bounded_and_keeps_the_tokens_used_last(es256_key: SigningKey, key_set: KeySet) -> None:
    checker = verifier(key_set, cache_size=2)
    alice, bob, carol = (es256_key.token(subject=name) for name in ("alice", "bob", "carol"))
    first_alice = checker.verify(alice)
    checker.verify(bob)
    assert checker.verify(alice) is first_alice  # alice used again: bob is now the oldest
    checker.verify(carol)

    assert checker.verify(alice) is first_alice
    first_bob = checker.verify(bob)  # verified again: it had been dropped
    assert checker.verify(bob) is first_bob


def _publish(path: Any, *keys: SigningKey, mtime_ns: int) -> None:
    """The issuer's JWKS file with ``keys``, stamped ``mtime_ns`` (what a reload looks at)."""
    path.write_text(json.dumps({"keys": [public_jwk(k.private_key, kid=k.kid) for k in keys]}))
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_jwks_file_follows_key_rotation_without_a_restart(
    tmp_path: Any, es256_key: SigningKey, rs256_key: SigningKey
) -> None:
    path = tmp_path / "jwks.json"

    def publish(*keys: SigningKey, mtime_ns: int) -> None:
        _publish(path, *keys, mtime_ns=mtime_ns)

    now = [0.0]
    publish(es256_key, mtime_ns=1_000_000_000)
    checker = verifier(JwksFile(path, min_reload_interval_s=30, clock=lambda: now[0]))
    old_token, new_token = es256_key.token(), rs256_key.token()
    assert checker.verify(old_token).subject == "alice"
    with pytest.raises(TokenRejected, match="not trusted"):
        checker.verify(new_token)

    publish(es256_key, rs256_key, mtime_ns=2_000_000_000)  # the issuer adds a key
    with pytest.raises(TokenRejected):
        checker.verify(new_token)  # not before the interval: lookups cannot force reads
    now[0] += 30
    assert checker.verify(new_token).subject == "alice"

    publish(rs256_key, mtime_ns=3_000_000_000)  # ... and retires the old one
    now[0] += 30
    with pytest.raises(TokenRejected, match="not trusted"):
        checker.verify(old_token)  # even though it was cached


def test_auth_work_is_decided_per_method_when_it_is_compiled(key_set: KeySet) -> None:
    verifier = TokenVerifier(keys=key_set, issuer=ISSUER, audience=AUDIENCE)
    auth = AuthInterceptor(
        verifier=verifier,
        policy=AuthPolicy(required_scopes={f"/{SERVICE}/*": ["echo.read"]}),
    )
    assert (
        auth.compile(MethodInfo("/grpc.health.v1.Health/Check", "grpc.health.v1.Health", "Check", False, False)) == []
    )  # public: no auth work at all
    [token] = auth.compile(
        MethodInfo(f"/{SERVICE}/Unary", SERVICE, "Unary", False, False)
    )  # scoped: the token is checked
    [denied] = auth.compile(
        MethodInfo("/other.Service/Call", "other.Service", "Call", False, False)
    )  # outside the policy: a constant refusal
    refusal = denied.check(None)  # type: ignore[arg-type]  # the refusal reads nothing of the call
    assert refusal is not None and refusal.code is grpc.StatusCode.PERMISSION_DENIED
    assert isinstance(token, Check) and token is not denied


class _Call:
    """What a token check reads of a call: its metadata."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def test_a_header_accepted_before_is_checked_again_for_expiry_scopes_and_key_on_every_call(
    tmp_path: Any, es256_key: SigningKey, rs256_key: SigningKey
) -> None:
    # Repeat calls with one header skip parsing and the verifier's cache, so this pins what they
    # must still check: the clock, the method's scopes and whether the key is still trusted.
    path = tmp_path / "jwks.json"
    _publish(path, es256_key, rs256_key, mtime_ns=1_000_000_000)
    wall, monotonic = [time.time()], [0.0]
    keys = JwksFile(path, min_reload_interval_s=30, clock=lambda: monotonic[0])
    auth = AuthInterceptor(
        verifier=TokenVerifier(keys=keys, issuer=ISSUER, audience=AUDIENCE, leeway_seconds=0, clock=lambda: wall[0]),
        policy=POLICY,
    )
    [unary] = auth.compile(MethodInfo(f"/{SERVICE}/Unary", SERVICE, "Unary", False, False))
    [bidi] = auth.compile(MethodInfo(f"/{SERVICE}/Bidi", SERVICE, "Bidi", True, True))

    def refusal(check: Check, token: str) -> str | None:
        # In a context of its own, as grpc.aio gives each call: a check sets current_caller.
        status = contextvars.copy_context().run(check.check, _Call(bearer(token)))  # type: ignore[arg-type]
        return None if status is None else status.details

    short = es256_key.token(scopes=("echo.read",), ttl_seconds=30)
    assert refusal(unary, short) is None
    assert refusal(unary, short) is None  # the second call, from what the first verified
    assert "echo.write" in str(refusal(bidi, short))  # accepted on Unary, still short of Bidi's scopes
    wall[0] += 31
    assert "expired" in str(refusal(unary, short))

    rotated = es256_key.token(scopes=("echo.read",))
    assert refusal(unary, rotated) is None
    _publish(path, rs256_key, mtime_ns=2_000_000_000)  # the issuer retires the key that signed it
    monotonic[0] += 30
    assert "not trusted" in str(refusal(unary, rotated))
