"""A live config change reaches the rate limiter and the circuit breakers of a running service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from interceptors.circuit_breaker import BreakerPolicy, BreakerSet, BreakerState
from interceptors.rate_limit import RateLimiter, RateLimitInterceptor, RateLimitPolicy
from runtime.live_config.enforce import follow_live_config
from runtime.live_config.kv import LiveConfig
from runtime.live_config.settings import DynamicSettings


async def echo(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


@pytest.fixture
async def limited_server() -> AsyncIterator[tuple[str, RateLimitInterceptor]]:
    # As the gateway starts with no limits configured: the interceptor is there, passing calls.
    interceptor = RateLimitInterceptor(limiter=RateLimiter(RateLimitPolicy()))
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(echo)})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", interceptor
    await server.stop(0)


async def test_a_live_rate_limit_applies_to_the_next_calls_without_a_restart(
    limited_server: tuple[str, RateLimitInterceptor],
) -> None:
    address, interceptor = limited_server
    live = LiveConfig(DynamicSettings(), service="gateway", consul=None)
    await follow_live_config(live, rate_limit=interceptor)
    async with grpc.aio.insecure_channel(address) as channel:
        say = channel.unary_unary("/test.Echo/Say")
        for _ in range(10):
            assert await say(b"hi", timeout=5) == b"hi"  # no limits yet

        assert await live.apply({"rate_limit": {"rate_per_second": 0.01, "burst": 2}}, source="test")
        assert await say(b"1", timeout=5) == b"1"
        assert await say(b"2", timeout=5) == b"2"
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await say(b"3", timeout=5)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_an_unrelated_change_leaves_the_buckets_alone(limited_server: tuple[str, RateLimitInterceptor]) -> None:
    address, interceptor = limited_server
    live = LiveConfig(DynamicSettings(), service="gateway", consul=None)
    await follow_live_config(live, rate_limit=interceptor)
    assert await live.apply({"rate_limit": {"rate_per_second": 0.01, "burst": 1}}, source="test")
    async with grpc.aio.insecure_channel(address) as channel:
        say = channel.unary_unary("/test.Echo/Say")
        assert await say(b"1", timeout=5) == b"1"
        assert await live.apply(
            {"rate_limit": {"rate_per_second": 0.01, "burst": 1}, "feature_flags": {"x": True}}, source="test"
        )
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await say(b"2", timeout=5)  # the bucket was not refilled by the flag change
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_live_breaker_thresholds_reach_existing_and_new_breakers() -> None:
    breakers = BreakerSet(BreakerPolicy(consecutive_failures=5), target_of=lambda method: "rag")
    existing = breakers.get("rag")
    live = LiveConfig(DynamicSettings(), service="agent", consul=None)
    await follow_live_config(live, breakers=breakers)

    assert await live.apply({"breaker": {"consecutive_failures": 1, "open_seconds": 30}}, source="test")

    permit = existing.acquire()
    assert permit is not None
    existing.record(permit, grpc.StatusCode.UNAVAILABLE)
    assert existing.state is BreakerState.OPEN  # one failure is now enough
    assert 25 < existing.retry_after() <= 30
    assert breakers.policy.consecutive_failures == 1
    assert breakers.policy.failure_codes == BreakerPolicy().failure_codes  # the configured codes stay
