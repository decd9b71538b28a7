"""Server reflection under both `grpc.reflection.v1` and `grpc.reflection.v1alpha`.

grpcio-reflection only serves v1alpha, but newer tools (grpcurl >= 1.9, Postman, buf curl) ask
for v1 first. The two protocols are the same messages under another package, so the v1
service reuses the v1alpha servicer over the same wire bytes; its descriptor is derived from
the v1alpha file at start-up, so `describe` works for it too.

Method symbols (`pkg.Service.Method`) resolve to the file declaring their service, as in
grpc-go: the stock servicer asks the pool's `FindFileContainingSymbol`, which knows services,
messages, enums and fields but not methods, so `grpcurl describe pkg.Service.Method` said
"Symbol not found".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE = reflection.SERVICE_NAME
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old_prefix = f".{proto.package}."
    proto.name = _V1_FILE
    proto.package = "grpc.reflection.v1"
    proto.options.Clear()
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old_prefix, ".grpc.reflection.v1.")
            method.output_type = method.output_type.replace(old_prefix, ".grpc.reflection.v1.")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old_prefix):
                field.type_name = field.type_name.replace(old_prefix, ".grpc.reflection.v1.")
    pool.Add(proto)


# reflection.aio is set at import time, so mypy sees neither it nor its class.
class _ReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc,name-defined]
    """The stock servicer, resolving method symbols too."""

    def _file_containing_symbol(
        self, request: reflection_pb2.ServerReflectionRequest, fully_qualified_name: str
    ) -> reflection_pb2.ServerReflectionResponse:
        pool: descriptor_pool.DescriptorPool = self._pool
        try:
            pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            with contextlib.suppress(KeyError):
                # The file of a method is the file of its service.
                fully_qualified_name = pool.FindMethodByName(fully_qualified_name).containing_service.full_name
        response: reflection_pb2.ServerReflectionResponse = super()._file_containing_symbol(
            request, fully_qualified_name
        )
        return response


def enable_reflection(
    server: grpc.aio.Server,
    service_names: Iterable[str],
    *,
    pool: descriptor_pool.DescriptorPool | None = None,
) -> None:
    """Serve reflection (v1 and v1alpha) describing `service_names` from `pool` (default pool if None)."""
    _add_v1_descriptor(pool if pool is not None else descriptor_pool.Default())
    names = [*service_names, V1ALPHA_SERVICE, V1_SERVICE]
    # One servicer answers both protocols: same messages, same wire bytes.
    servicer = _ReflectionServicer(names, pool=pool)
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for service in (V1ALPHA_SERVICE, V1_SERVICE):
        # Registered, not generic: the registrar compiles a registered method into its method
        # table at start-up (interceptors/layer.py), so its metrics exist, at 0, before its first
        # call; a generic handler's methods are only known once called. grpc-stubs lacks this
        # method (grpcio 1.62+).
        server.add_registered_method_handlers(service, {"ServerReflectionInfo": method})  # type: ignore[attr-defined]
