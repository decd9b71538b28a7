"""Idempotency keys: the first finished outcome is stored and replayed; conflicts, transient
outcomes and bad keys are handled."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from structlog.testing import capture_logs

from interceptors.idempotency import IdempotencyInterceptor, IdempotentMethod, MemoryStore
from runtime.idempotency import RedisStore
from tests.interceptors.idempotency.helpers import CallerFromHeader, detail, keyed
from tests.interceptors.probe import DO, STREAM, Probe, serve, sv
from tests.ports import free_port

KEY = "6f1c2a9e-3b7d-4c55-9e0a-1d2b3c4d5e6f"


def idempotency(**options: object) -> IdempotencyInterceptor:
    methods = options.pop("methods", {DO: IdempotentMethod()})
    return IdempotencyInterceptor(store=MemoryStore(), methods=methods, retry_delay=0.05, **options)  # type: ignore[arg-type]


async def test_a_retry_gets_the_first_response_replayed_and_marked(probe: Probe) -> None:
    async with serve(probe, [idempotency()]) as client:
        first = await keyed(client, "ok:a", KEY)
        second = await keyed(client, "ok:a", KEY)
    assert (first.value, first.replayed) == ("a#1", False)
    assert (second.value, second.replayed) == ("a#1", True)
    assert probe.runs["ok:a"] == 1


async def test_an_error_is_replayed_with_its_status_details(probe: Probe) -> None:
    async with serve(probe, [idempotency()]) as client:
        first = await keyed(client, "abort:FAILED_PRECONDITION", KEY)
        second = await keyed(client, "abort:FAILED_PRECONDITION", KEY)
    assert first.code is second.code is grpc.StatusCode.FAILED_PRECONDITION
    assert second.error.details() == first.error.details() == "probe aborted with FAILED_PRECONDITION"
    assert detail(second.error, error_details_pb2.BadRequest) == detail(first.error, error_details_pb2.BadRequest)
    assert second.replayed and probe.runs["abort:FAILED_PRECONDITION"] == 1


async def test_the_same_key_with_another_payload_is_invalid_argument(probe: Probe) -> None:
    async with serve(probe, [idempotency()]) as client:
        await keyed(client, "ok:a", KEY)
        other = await keyed(client, "ok:b", KEY)
    assert other.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "already used with a different request" in other.error.details()
    assert detail(other.error, error_details_pb2.BadRequest).field_violations[0].field == "idempotency-key"
    assert probe.runs["ok:b"] == 0


async def test_the_same_key_while_the_first_call_runs_is_aborted_with_retry_info(probe: Probe) -> None:
    async with serve(probe, [idempotency()]) as client:
        first = asyncio.ensure_future(keyed(client, "gate", KEY))
        await asyncio.wait_for(probe.started.wait(), 10)
        second = await keyed(client, "gate", KEY)
        probe.gate.set()
        assert (await first).value == "gate#1"
    assert second.code is grpc.StatusCode.ABORTED
    assert detail(second.error, error_details_pb2.RetryInfo).retry_delay.ToTimedelta().total_seconds() == 0.05
    assert probe.runs["gate"] == 1


@pytest.mark.parametrize("command", ["abort:UNAVAILABLE", "abort:RESOURCE_EXHAUSTED"])
async def test_transient_errors_are_not_stored_so_a_retry_runs(probe: Probe, command: str) -> None:
    async with serve(probe, [idempotency()]) as client:
        await keyed(client, command, KEY)
        retry = await keyed(client, command, KEY)
    assert not retry.replayed and probe.runs[command] == 2


async def test_an_expired_deadline_is_not_stored_so_a_retry_runs(probe: Probe) -> None:
    async with serve(probe, [idempotency()]) as client:
        timed_out = await keyed(client, "gate", KEY, timeout=0.2)
        assert timed_out.code is grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(probe.cancelled.wait(), 10)  # the server saw the deadline too
        probe.gate.set()
        for _ in range(100):  # the server notices the deadline just after the client does
            retry = await keyed(client, "gate", KEY)
            if retry.code is not grpc.StatusCode.ABORTED:
                break
            await asyncio.sleep(0.05)
    assert (retry.value, retry.replayed) == ("gate#2", False)


async def test_a_crash_is_stored_as_internal_without_its_text(probe: Probe) -> None:
    async with serve(probe, [idempotency()]) as client:
        await keyed(client, "crash", KEY)
        retry = await keyed(client, "crash", KEY)
    assert (retry.code, retry.error.details(), retry.replayed) == (
        grpc.StatusCode.INTERNAL,
        "internal error",
        True,
    )
    assert probe.runs["crash"] == 1


@pytest.mark.parametrize(
    ("key", "problem"),
    [("", "must not be empty"), ("k" * 256, "at most 255 characters"), ("no spaces", "may contain only")],
)
async def test_bad_keys_are_invalid_argument_naming_the_header(probe: Probe, key: str, problem: str) -> None:
    async with serve(probe, [idempotency()]) as client:
        result = await keyed(client, "ok:a", key)
    assert result.code is grpc.StatusCode.INVALID_ARGUMENT and problem in result.error.details()
    violation = detail(result.error, error_details_pb2.BadRequest).field_violations[0]
    assert violation.field == "idempotency-key" and problem in violation.description
    assert probe.runs["ok:a"] == 0


async def test_calls_without_a_key_run_every_time(probe: Probe) -> None:
    async with serve(probe, [idempotency()]) as client:
        await keyed(client, "ok:a", None)
        assert (await keyed(client, "ok:a", None)).value == "a#2"


async def test_keys_are_scoped_to_the_caller(probe: Probe) -> None:
    async with serve(probe, [CallerFromHeader(), idempotency()]) as client:
        alice = await keyed(client, "ok:a", KEY, caller="alice")
        bob = await keyed(client, "ok:a", KEY, caller="bob")
        alice_again = await keyed(client, "ok:a", KEY, caller="alice")
    assert (alice.value, bob.value, alice_again.value) == ("a#1", "a#2", "a#1")
    assert alice_again.replayed and not bob.replayed


async def test_a_request_field_can_carry_the_key(probe: Probe) -> None:
    methods = {DO: IdempotentMethod(request_field="value")}
    async with serve(probe, [idempotency(methods=methods)]) as client:
        await keyed(client, "ok:field-key", None)
        again = await keyed(client, "ok:field-key", None)
        clash = await keyed(client, "ok:field-key", "another-key")
    assert again.replayed and probe.runs["ok:field-key"] == 1
    assert clash.code is grpc.StatusCode.INVALID_ARGUMENT and "differs from the idempotency-key header" in (
        clash.error.details()
    )


async def test_methods_not_configured_are_left_untouched(probe: Probe) -> None:
    interceptor = idempotency(methods={})
    async with serve(probe, [interceptor]) as client:
        await keyed(client, "ok:a", KEY)
        assert not (await keyed(client, "ok:a", KEY)).replayed


async def test_streaming_methods_cannot_take_keys(probe: Probe) -> None:
    async with serve(probe, [idempotency(methods={STREAM: IdempotentMethod()})]) as client:
        with pytest.raises(grpc.aio.AioRpcError):
            await client.stream(sv("1")).read()


def test_method_names_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match=r"look like /package\.Service/Method"):
        idempotency(methods={"Do": IdempotentMethod()})


async def test_an_unreachable_store_is_unavailable_with_retry_info_and_the_handler_does_not_run(probe: Probe) -> None:
    port = free_port()  # nothing listens there
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0")
    interceptor = IdempotencyInterceptor(store=store, methods={DO: IdempotentMethod()}, retry_delay=0.05)
    try:
        async with serve(probe, [interceptor]) as client:
            with capture_logs():
                result = await keyed(client, "ok:a", KEY)
    finally:
        await store.close()
    assert result.code is grpc.StatusCode.UNAVAILABLE
    assert detail(result.error, error_details_pb2.RetryInfo).retry_delay.ToTimedelta().total_seconds() == 0.05
    assert probe.runs["ok:a"] == 0
