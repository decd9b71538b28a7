"""The route table: which backend serves each method, and the method's streaming shape.

Built once at start-up from configuration and the descriptor set, so the per-call work is one
dict lookup. The shapes come from the descriptors, so the gateway needs no generated code of
the services it fronts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2


@dataclass(frozen=True, slots=True)
class Route:
    method: str  # "/pkg.Service/Method"
    backend: str
    client_streaming: bool
    server_streaming: bool


def load_descriptor_pool(path: Path) -> descriptor_pool.DescriptorPool:
    """A pool with every file of the descriptor set, plus health and reflection for reflection."""
    file_set = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for module in (health_pb2, reflection_pb2):
        proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(proto)
        pool.Add(proto)
    known = {"grpc/health/v1/health.proto", "grpc/reflection/v1alpha/reflection.proto"}
    # --include_imports writes files in dependency order, so each Add finds its imports.
    for proto in file_set.file:
        if proto.name not in known:
            pool.Add(proto)
    return pool


def build_routes(routes: Mapping[str, str], pool: descriptor_pool.DescriptorPool) -> dict[str, Route]:
    table: dict[str, Route] = {}
    for service_name, backend in routes.items():
        try:
            service = pool.FindServiceByName(service_name)
        except KeyError:
            raise ValueError(f"route for unknown service {service_name!r}: not in the descriptor set") from None
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            table[path] = Route(path, backend, method.client_streaming, method.server_streaming)
    return table
