"""Undecodable request bytes become INVALID_ARGUMENT, not grpc's default UNKNOWN with a stack-derived message.

grpc deserializes before any handler code runs and reports a failure as UNKNOWN, which tells a
client nothing useful. This concern takes decoding over for calls with a single request
message: the compiled handler is given raw bytes and this step parses them, so a corrupt
payload gets an actionable status, refused inside the server layer where it is traced, counted
and logged. Streaming requests keep grpc's own decoding.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from interceptors._typing import Context, Responses, StreamBehavior, UnaryBehavior
from interceptors.layer import Concern, MethodInfo, Wrap
from interceptors.selector import Matcher, every_method
from rpcstatus.errors import invalid_argument


class DecodeInterceptor(Concern):
    """Parse each single-message request here, refusing a corrupt one with INVALID_ARGUMENT."""

    def __init__(self, *, select: Matcher = every_method) -> None:
        self.select = select

    def compile(self, info: MethodInfo) -> Wrap | None:
        deserialize = info.request_deserializer
        if info.request_streaming or deserialize is None:
            return None
        refusal = invalid_argument([("(request)", f"is not a valid protobuf message for {info.name}")])

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def decoded(raw: bytes, context: Context) -> Any:
                try:
                    request = deserialize(raw)
                except DecodeError:
                    await refusal.abort(context)
                return await behavior(request, context)

            return decoded

        def streaming(behavior: StreamBehavior) -> StreamBehavior:
            async def decoded(raw: bytes, context: Context) -> Responses:
                try:
                    request = deserialize(raw)
                except DecodeError:
                    await refusal.abort(context)
                async for response in behavior(request, context):
                    yield response

            return decoded

        return Wrap(unary=unary, streaming=streaming, raw_request=True)
