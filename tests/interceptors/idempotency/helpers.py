"""Client-side helpers for idempotency tests: keyed calls, reading rich status details."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
from google.protobuf.wrappers_pb2 import StringValue
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from interceptors._typing import Context
from interceptors.identity import Caller, current_caller
from interceptors.layer import Check, Concern, MethodInfo
from interceptors.outcome import metadata_value
from tests.interceptors.probe import ProbeClient, sv


class CallerFromHeader(Concern):
    """Stands in for auth: the caller is whoever the ``x-test-caller`` header says."""

    def compile(self, info: MethodInfo) -> Check:
        def as_caller(context: Context) -> grpc.Status | None:
            subject = metadata_value(context.invocation_metadata(), "x-test-caller")
            current_caller.set(Caller(subject=str(subject or "anonymous")))
            return None

        return Check(as_caller)


def detail(error: grpc.aio.AioRpcError, kind: type[Any]) -> Any:
    """The first rich-status detail of type ``kind`` on ``error``."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status on the error"
    for item in status.details:
        if item.Is(kind.DESCRIPTOR):
            found = kind()
            item.Unpack(found)
            return found
    raise AssertionError(f"no {kind.__name__} detail in {status}")


class Result:
    def __init__(self, value: str | None, code: grpc.StatusCode, trailing: dict[str, Any], error: Any) -> None:
        self.value, self.code, self.trailing, self.error = value, code, trailing, error

    @property
    def replayed(self) -> bool:
        return self.trailing.get("idempotency-replayed") == "true"


async def keyed(client: ProbeClient, command: str, key: str | None, caller: str | None = None, **kw: Any) -> Result:
    """One call with ``idempotency-key: key``, its outcome captured whether it failed or not."""
    metadata = []
    if key is not None:
        metadata.append(("idempotency-key", key))
    if caller is not None:
        metadata.append(("x-test-caller", caller))
    call = client.do(sv(command), metadata=metadata, **kw)
    try:
        response: StringValue = await call
    except grpc.aio.AioRpcError as error:
        trailing: Any = error.trailing_metadata() or ()
        return Result(None, error.code(), dict(trailing), error)
    return Result(response.value, grpc.StatusCode.OK, dict(await call.trailing_metadata() or ()), None)


async def keyed_until_done(client: ProbeClient, command: str, key: str) -> Result:
    """Retry while the key's first call is running, after the RetryInfo delay the server asks for."""
    for _ in range(200):
        result = await keyed(client, command, key)
        if result.code is not grpc.StatusCode.ABORTED:
            return result
        await asyncio.sleep(detail(result.error, error_details_pb2.RetryInfo).retry_delay.ToTimedelta().total_seconds())
    raise AssertionError("the first call never finished")
