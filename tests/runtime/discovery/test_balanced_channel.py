"""Balanced channels: calls spread over healthy instances, follow discovery live, and fail over."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from interceptors.retry import RetryPolicy, retry_interceptors
from runtime.discovery.balanced_channel import BalancedChannel, service_config
from runtime.discovery.consul import ConsulResolver
from runtime.discovery.endpoints import Endpoint, Endpoints
from runtime.discovery.registration import ConsulRegistrar, ServiceRegistration
from runtime.discovery.static import StaticResolver
from tests.doubles.consul_fixtures import ConsulUnderTest
from tests.doubles.echo_instance import ECHO_METHOD, TICKS_METHOD, EchoInstance
from tests.runtime.log_events import log_events


async def echo(channel: grpc.aio.Channel) -> str:
    reply: bytes = await channel.unary_unary(ECHO_METHOD, None, None)(b"", timeout=10)
    return reply.decode()


async def test_calls_spread_round_robin_over_every_instance() -> None:
    async with EchoInstance("a") as a, EchoInstance("b") as b:
        resolver = StaticResolver({"rag": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]})
        async with BalancedChannel("rag", resolver) as channel:
            await channel.channel_ready()
            served = Counter([await echo(channel) for _ in range(20)])
        assert set(served) == {"a", "b"}
        assert min(served.values()) >= 5


async def test_an_instance_that_reports_not_serving_gets_no_new_calls_at_once() -> None:
    async with EchoInstance("a") as a, EchoInstance("b") as b:
        resolver = StaticResolver({"rag": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]})
        async with BalancedChannel("rag", resolver) as channel:
            await channel.channel_ready()
            await a.set_serving(False)  # e.g. draining after SIGTERM
            # The Watch stream of client-side health checking delivers NOT_SERVING without any
            # help from discovery; from then on every pick skips "a".
            async with asyncio.timeout(10):
                while (await echo(channel), await echo(channel)) != ("b", "b"):
                    pass
            assert {await echo(channel) for _ in range(10)} == {"b"}


async def test_with_no_instances_calls_fail_unavailable_naming_the_service() -> None:
    async with BalancedChannel("rag", StaticResolver({"rag": []})) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await echo(channel)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no healthy instances of 'rag'" in (failure.value.details() or "")


def test_the_service_config_balances_and_health_checks_but_leaves_retries_to_the_interceptor() -> None:
    config = service_config()
    assert config == {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
    assert "methodConfig" not in service_config(health_service=None)


async def _spawn_instance(name: str) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.doubles.echo_instance", "--name", name, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    return process, int(await asyncio.wait_for(process.stdout.readline(), 20))


@pytest.fixture
async def two_rag_processes() -> AsyncIterator[dict[str, tuple[asyncio.subprocess.Process, int]]]:
    instances = {name: await _spawn_instance(name) for name in ("rag-a", "rag-b")}
    yield instances
    for process, _ in instances.values():
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_calls_spread_over_two_consul_instances_and_all_reach_the_survivor_when_one_dies(
    consul: ConsulUnderTest, two_rag_processes: dict[str, tuple[asyncio.subprocess.Process, int]]
) -> None:
    name = consul.unique("rag")
    registrars = [
        ConsulRegistrar(
            consul.address,
            ServiceRegistration(name=name, address="127.0.0.1", port=port, version="v1", check_interval=0.2),
        )
        for _, port in two_rag_processes.values()
    ]
    for registrar in registrars:
        registrar.start()
    resolver = ConsulResolver(consul.address)
    failures: list[grpc.aio.AioRpcError] = []
    served: Counter[str] = Counter()
    stop = asyncio.Event()
    progress = asyncio.Condition()

    async def caller(channel: BalancedChannel) -> None:
        echo_safely = channel.unary_unary(ECHO_METHOD, None, None)
        # The key makes the call safe to repeat, so the retry interceptor may send it again.
        safe = (("idempotency-key", "echo"),)
        while not stop.is_set():
            try:
                reply: bytes = await echo_safely(b"", timeout=10, metadata=safe)
                served[reply.decode()] += 1
            except grpc.aio.AioRpcError as error:
                failures.append(error)
            async with progress:
                progress.notify_all()

    async def until(predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(20), progress:
            await progress.wait_for(predicate)

    try:
        retries = retry_interceptors(RetryPolicy(max_attempts=5, initial_backoff_seconds=0.05))
        async with BalancedChannel(name, resolver, interceptors=retries) as channel:
            await asyncio.wait_for(channel.wait_for_endpoints(lambda e: len(e) == 2), 20)
            callers = [asyncio.create_task(caller(channel)) for _ in range(3)]
            await until(lambda: served["rag-a"] >= 5 and served["rag-b"] >= 5)

            victim, _ = two_rag_processes["rag-a"]
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            await asyncio.wait_for(channel.wait_for_endpoints(lambda e: len(e) == 1), 20)
            survivor_calls_before = served["rag-b"]
            await until(lambda: served["rag-b"] >= survivor_calls_before + 20)
            stop.set()
            await asyncio.gather(*callers)
    finally:
        await resolver.aclose()
        for registrar in registrars:
            await registrar.deregister()

    assert failures == [], "calls safe to repeat are retried on the surviving instance"
    assert [e.instance_id for e in channel.endpoints] == [registrars[1].registration.service_id]


async def test_a_service_missing_from_the_static_table_is_logged_and_calls_fail_unavailable() -> None:
    with log_events() as logs:
        async with BalancedChannel("search", StaticResolver({"rag": []})) as channel:
            failure = await logs.wait_for("discovery.watch_failed")
            with pytest.raises(grpc.aio.AioRpcError) as call:
                await echo(channel)
    assert "no static endpoints for service 'search'" in failure["error"]
    assert call.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_host_names_resolve_preferring_ipv4_like_the_servers_bind() -> None:
    async with (
        EchoInstance("a") as a,
        BalancedChannel("rag", StaticResolver({"rag": [f"localhost:{a.port}"]})) as channel,
    ):
        assert await echo(channel) == "a"


class SettableResolver:
    """A resolver the test moves by hand: each ``publish`` is one discovery change."""

    def __init__(self) -> None:
        self._changes: asyncio.Queue[Endpoints] = asyncio.Queue()

    def publish(self, *targets: str) -> None:
        self._changes.put_nowait(tuple(Endpoint.parse(t) for t in targets))

    async def resolve(self, service: str) -> Endpoints:
        raise NotImplementedError

    async def watch(self, service: str) -> AsyncIterator[Endpoints]:
        while True:
            yield await self._changes.get()

    async def aclose(self) -> None:
        pass


async def test_a_stream_running_when_the_endpoint_set_changes_finishes_on_its_old_channel() -> None:
    resolver = SettableResolver()
    resolver.publish("127.0.0.1:1")  # placeholder so the channel starts; replaced below
    async with EchoInstance("a") as a, EchoInstance("b") as b, BalancedChannel("rag", resolver) as channel:
        resolver.publish(f"127.0.0.1:{a.port}")
        await channel.wait_for_endpoints(lambda e: [x.port for x in e] == [a.port])
        stream = channel.unary_stream(TICKS_METHOD)(b"", timeout=20)
        assert await stream.read() == b"a"

        resolver.publish(f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}")  # membership changes mid-stream
        await channel.wait_for_endpoints(lambda e: len(e) == 2)
        assert {await echo(channel) for _ in range(6)} == {"a", "b"}  # new calls use the new set
        a.release.set()
        assert await stream.read() == b"a"  # the old stream was not cut off
        assert await stream.read() == grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
