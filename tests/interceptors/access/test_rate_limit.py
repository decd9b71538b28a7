"""Rate limits: a token bucket per (caller, method); RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interceptors.auth import AuthInterceptor, AuthPolicy
from interceptors.jwks import KeySet, TokenVerifier
from interceptors.rate_limit import Limit, RateLimiter, RateLimitInterceptor, RateLimitPolicy
from rpcstatus.details import find_detail
from tests.interceptors.echo_service import SERVICE, UNARY, Echo, EchoClient, error_reason, requests_of
from tests.interceptors.signing import AUDIENCE, ISSUER, SigningKey

Serve = Callable[..., Awaitable[tuple[Echo, int]]]

# Slow refill so a test's calls never earn a token back mid-test.
SLOW = Limit(rate_per_second=0.01, burst=2)
POLICY = RateLimitPolicy(
    limits={f"/{SERVICE}/*": SLOW},
    caller_limits={"batch": {UNARY: Limit(rate_per_second=0.01, burst=5)}},
)


@pytest.fixture
async def echo(serve: Serve, key_set: KeySet) -> Any:
    auth = AuthInterceptor(
        verifier=TokenVerifier(keys=key_set, issuer=ISSUER, audience=AUDIENCE),
        policy=AuthPolicy(required_scopes={f"/{SERVICE}/*": []}),
    )
    _, port = await serve(interceptors=[auth, RateLimitInterceptor(limiter=RateLimiter(POLICY))])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield EchoClient(channel), channel


def as_(key: SigningKey, subject: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key.token(subject)}"),)


async def refused_after(client: Any, metadata: Any, *, allowed: int) -> grpc.aio.AioRpcError:
    """``allowed`` unary calls that succeed, then the error of one more (which must fail)."""
    for _ in range(allowed):
        await client.unary(StringValue(value="x"), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.unary(StringValue(value="x"), metadata=metadata)
    return caught.value


async def test_calls_beyond_the_burst_are_resource_exhausted_with_retry_and_quota_details(
    echo: Any, es256_key: SigningKey
) -> None:
    client, _ = echo
    md = as_(es256_key, "alice")
    error = await refused_after(client, md, allowed=2)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "RATE_LIMITED"
    retry = find_detail(error, error_details_pb2.RetryInfo)
    assert retry is not None
    # One token at 0.01/s takes up to 100 s.
    assert 0 < retry.retry_delay.ToMilliseconds() <= 100_001
    quota = find_detail(error, error_details_pb2.QuotaFailure)
    assert quota is not None
    assert quota.violations[0].subject == "caller:alice"
    assert quota.violations[0].quota_dimensions["method"] == UNARY


async def test_each_caller_has_its_own_bucket(echo: Any, es256_key: SigningKey) -> None:
    client, _ = echo
    for _ in range(2):
        await client.unary(StringValue(value="x"), metadata=as_(es256_key, "alice"))
    reply = await client.unary(StringValue(value="x"), metadata=as_(es256_key, "bob"))
    assert reply.value.startswith("bob")


async def test_each_method_has_its_own_bucket(echo: Any, es256_key: SigningKey) -> None:
    client, _ = echo
    md = as_(es256_key, "alice")
    for _ in range(2):
        await client.unary(StringValue(value="x"), metadata=md)
    gathered = await client.client_stream(requests_of("a"), metadata=md)
    assert gathered.value == "alice|-:a"


async def test_streaming_calls_are_limited_too(echo: Any, es256_key: SigningKey) -> None:
    client, _ = echo
    md = as_(es256_key, "carol")
    for _ in range(2):
        assert len([r async for r in client.bidi(requests_of("a"), metadata=md)]) == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in client.bidi(requests_of("a"), metadata=md):
            pass
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    for _ in range(2):
        assert len([r async for r in client.server_stream(StringValue(value="s"), metadata=md)]) == 3
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in client.server_stream(StringValue(value="s"), metadata=md):
            pass
    assert streamed.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_caller_override_replaces_the_default_limit(echo: Any, es256_key: SigningKey) -> None:
    client, _ = echo
    md = as_(es256_key, "batch")
    error = await refused_after(client, md, allowed=5)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_unlimited_methods_are_not_limited(echo: Any) -> None:
    _, channel = echo
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(5):
        await stub.Check(health_pb2.HealthCheckRequest())


async def test_rejected_auth_does_not_spend_the_callers_tokens(echo: Any, es256_key: SigningKey) -> None:
    client, _ = echo
    with pytest.raises(grpc.aio.AioRpcError):
        await client.unary(StringValue(value="x"), metadata=(("authorization", "Bearer junk"),))
    for _ in range(2):
        await client.unary(StringValue(value="x"), metadata=as_(es256_key, "dave"))


def test_bucket_refills_at_the_configured_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(RateLimitPolicy(limits={"*": Limit(rate_per_second=2, burst=2)}), clock=lambda: now[0])
    assert limiter.acquire("a", "/s.S/M") == 0.0
    assert limiter.acquire("a", "/s.S/M") == 0.0
    assert limiter.acquire("a", "/s.S/M") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.acquire("a", "/s.S/M") == 0.0
    now[0] += 60  # a long pause refills to the burst, not beyond
    assert [limiter.acquire("a", "/s.S/M") for _ in range(3)][2] > 0


def test_buckets_are_bounded_and_the_least_recent_is_evicted() -> None:
    limiter = RateLimiter(RateLimitPolicy(limits={"*": Limit(rate_per_second=0.001, burst=1)}), max_buckets=2)
    for caller in ("a", "b", "c"):
        assert limiter.acquire(caller, "/s.S/M") == 0.0
    # "a" was evicted, so it starts over with a full bucket; "c" is still tracked.
    assert limiter.acquire("a", "/s.S/M") == 0.0
    assert limiter.acquire("c", "/s.S/M") > 0
