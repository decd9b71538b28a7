"""Checks of the policy against the gRPC contracts (the ``protoc --include_imports`` descriptor set).

A method pattern that names no real method is a typo that would silently never match, and
a retry on a method that changes state can do it twice; both are caught here, from the
``idempotency_level`` the protos declare rather than from method names.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2

from interceptors.selector import matches
from mesh.policy import Policy

_SAFE_TO_RETRY = {
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT,
}


# The edge turns grpc-status-details-bin into JSON only for detail types it can describe.
ERROR_DETAIL_FILES = ("google/rpc/status.proto", "google/rpc/error_details.proto")


def missing_error_detail_files(descriptor_set: Path) -> list[str]:
    """Error-detail protos the transcoder needs that the descriptor set lacks.

    Without them an error reaches HTTP clients as a bare status code with an empty body.
    """
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    present = {file.name for file in files.file}
    return [name for name in ERROR_DETAIL_FILES if name not in present]


def load_methods(descriptor_set: Path) -> dict[str, descriptor_pb2.MethodDescriptorProto]:
    """gRPC path ("/pkg.Service/Method") -> method, for every service in the set."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    methods: dict[str, descriptor_pb2.MethodDescriptorProto] = {}
    for file in files.file:
        for service in file.service:
            for method in service.method:
                methods[f"/{file.package}.{service.name}/{method.name}"] = method
    return methods


def contract_problems(policy: Policy, methods: dict[str, descriptor_pb2.MethodDescriptorProto]) -> list[str]:
    """Everything in ``policy`` the contracts contradict; empty when it is consistent."""
    problems: list[str] = []
    known_services = {path.rsplit("/", 1)[0].lstrip("/") for path in methods}
    for name in policy.edge.transcode:
        if name not in known_services:
            problems.append(f"edge transcodes unknown service {name}")
    patterns: list[tuple[str, str]] = []
    for service_name, service in policy.services.items():
        for caller, allowed in service.callers.items():
            patterns += [(f"{service_name}.callers.{caller}", p) for p in allowed]
        for index, route in enumerate(service.routes):
            where = f"{service_name}.routes[{index}]"
            patterns += [(where, p) for p in route.methods]
            if route.retries is None:
                continue
            for pattern in route.methods:
                for path, method in methods.items():
                    if matches(pattern, path) and method.options.idempotency_level not in _SAFE_TO_RETRY:
                        problems.append(
                            f"{where} retries {path}, which the protos do not mark NO_SIDE_EFFECTS or IDEMPOTENT"
                        )
    for where, pattern in patterns:
        # grpc.* (health, reflection) are gRPC's own services, not in our contracts.
        if pattern == "*" or pattern.startswith("/grpc."):
            continue
        if not any(matches(pattern, path) for path in methods):
            problems.append(f"{where}: {pattern} matches no method in the contracts")
    return problems
