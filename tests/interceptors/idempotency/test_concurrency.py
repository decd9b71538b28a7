"""Under real concurrency the handler runs once per key, with every store, and survives a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from interceptors.idempotency import IdempotencyInterceptor, IdempotencyStore, IdempotentMethod
from tests.interceptors.idempotency.helpers import Result, keyed, keyed_until_done
from tests.interceptors.probe import DO, Probe, serve

KEY = "3d0f7b8e-61a4-4f0c-8a53-5b9d2e7c1a40"


def _interceptor(store: IdempotencyStore) -> IdempotencyInterceptor:
    return IdempotencyInterceptor(store=store, methods={DO: IdempotentMethod()}, retry_delay=0.05)


@pytest.mark.slow
async def test_fifty_concurrent_identical_calls_run_the_handler_once_and_all_get_its_answer(
    store_factory: Callable[[], IdempotencyStore],
) -> None:
    probe = Probe()
    store = store_factory()
    try:
        async with serve(probe, [_interceptor(store)]) as client:
            results = await asyncio.gather(*(keyed_until_done(client, "slow:once", KEY) for _ in range(50)))
    finally:
        await store.close()
    assert probe.runs["slow:once"] == 1
    assert {result.value for result in results} == {"once#1"}
    assert sum(not result.replayed for result in results) == 1


@pytest.mark.parametrize("store_factory", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)], indirect=True)
async def test_a_retry_after_a_server_restart_is_replayed(
    store_factory: Callable[[], IdempotencyStore],
) -> None:
    async def call_a_fresh_server(probe: Probe) -> Result:
        store = store_factory()  # a new store on the same data: the restarted server's
        try:
            async with serve(probe, [_interceptor(store)]) as client:
                return await keyed(client, "ok:durable", KEY)
        finally:
            await store.close()

    before, after = Probe(), Probe()
    first = await call_a_fresh_server(before)
    retry = await call_a_fresh_server(after)
    assert (first.value, retry.value, retry.replayed) == ("durable#1", "durable#1", True)
    assert after.runs["ok:durable"] == 0
