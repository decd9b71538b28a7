"""What a scenario starts: the processes between the client and the bench backend.

Each topology starts its processes in a `ProcessGroup` (so each one's CPU is accounted apart) and
returns the `Endpoint` clients call. The gateway is the real `python -m services.gateway`.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from bench import envoy
from bench.backend import BackendSpec
from bench.payload import SERVICE
from bench.processes import Child, ProcessGroup, python_argv, python_env
from bench.stacks import NEEDS_REDIS


@dataclass(frozen=True)
class ClientTls:
    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class Endpoint:
    address: str  # host:port
    tls: ClientTls | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"


class Topology(Protocol):
    def start(self, group: ProcessGroup) -> Endpoint: ...

    def describe(self) -> str: ...


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_tcp(child: Child, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.role} exited with {child.popen.returncode}:\n{child.logs()}")
        try:
            with socket.create_connection(("127.0.0.1", child.port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{child.role} is not accepting connections on {child.port}:\n{child.logs()}")


def start_redis(group: ProcessGroup) -> str:
    """A throwaway redis-server on a free loopback port, nothing persisted; returns its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    child = group.start("redis", argv, port=port)
    wait_for_tcp(child)
    return f"redis://127.0.0.1:{port}/0"


def start_backend(group: ProcessGroup, spec: BackendSpec, role: str = "backend") -> Child:
    if NEEDS_REDIS.intersection(spec.interceptors) and spec.options.redis_url is None:
        spec = replace(spec, options=replace(spec.options, redis_url=start_redis(group)))
    spec = replace(spec, options=replace(spec.options, data_dir=str(group.work_dir / "data")))
    port_file = group.port_file(role)
    argv = python_argv("bench.backend", "--spec", spec.to_json(), "--port-file", str(port_file))
    return group.start(role, argv, env=python_env(), port_file=port_file)


def _describe_backend(spec: BackendSpec) -> str:
    server = "bootstrap" if spec.bootstrap else "bare grpc.aio"
    return f"{server} + [{', '.join(spec.interceptors)}]" if spec.interceptors else server


@dataclass(frozen=True)
class Direct:
    """client → backend."""

    backend: BackendSpec = field(default_factory=BackendSpec)

    def start(self, group: ProcessGroup) -> Endpoint:
        return Endpoint(start_backend(group, self.backend).address)

    def describe(self) -> str:
        return f"client → backend ({_describe_backend(self.backend)})"


@dataclass(frozen=True)
class ViaGateway:
    """client → gateway (`python -m services.gateway`) → backend."""

    backend: BackendSpec = field(default_factory=BackendSpec)
    gateway_env: tuple[tuple[str, str], ...] = ()

    def start(self, group: ProcessGroup) -> Endpoint:
        backend = start_backend(group, self.backend)
        port_file = group.port_file("gateway")
        env = python_env(
            {
                "AGENTMESH_GATEWAY_PORT": "0",
                "AGENTMESH_GATEWAY_PORT_FILE": str(port_file),
                "AGENTMESH_GATEWAY_ROUTES": json.dumps({SERVICE: "agent"}),
                "AGENTMESH_GATEWAY_BACKENDS": json.dumps({"agent": [backend.address]}),
                "AGENTMESH_GATEWAY_DRAIN_DELAY_S": "0",
                "AGENTMESH_GATEWAY_GRACE_PERIOD_S": "1",
                **dict(self.gateway_env),
            }
        )
        gateway = group.start("gateway", python_argv("services.gateway"), env=env, port_file=port_file)
        return Endpoint(gateway.address)

    def describe(self) -> str:
        return f"client → gateway → backend ({_describe_backend(self.backend)})"


@dataclass(frozen=True)
class ViaEnvoy:
    """client → Envoy sidecar → backend, or with `mtls` the mesh path between two sidecars:
    client → outbound sidecar (plaintext on loopback) → mTLS → inbound sidecar → backend.
    With `edge`, the first proxy is an edge terminating TLS from the client (no client certificate)."""

    backend: BackendSpec = field(default_factory=BackendSpec)
    mtls: bool = False
    edge: bool = False

    def start(self, group: ProcessGroup) -> Endpoint:
        backend = start_backend(group, self.backend)
        if not self.mtls:
            listen, admin = free_port(), free_port()
            config = envoy.proxy(listen_port=listen, admin_port=admin, upstream_port=backend.port)
            return Endpoint(envoy.start(group, "sidecar", config, admin_port=admin, listen_port=listen).address)
        certs = envoy.write_certs(group.work_dir / "certs", ["inbound.bench.local", "outbound.bench.local"])
        inbound, outbound = certs["inbound.bench.local"], certs["outbound.bench.local"]
        in_port, in_admin = free_port(), free_port()
        inbound_config = envoy.proxy(
            listen_port=in_port,
            admin_port=in_admin,
            upstream_port=backend.port,
            downstream_tls=inbound,
            require_client_certificate=True,
        )
        envoy.start(group, "sidecar", inbound_config, admin_port=in_admin, listen_port=in_port)
        out_port, out_admin = free_port(), free_port()
        outbound_config = envoy.proxy(
            listen_port=out_port,
            admin_port=out_admin,
            upstream_port=in_port,
            downstream_tls=outbound if self.edge else None,
            upstream_tls=outbound,
            upstream_sni="inbound.bench.local",
        )
        role = "edge" if self.edge else "outbound"
        first = envoy.start(group, role, outbound_config, admin_port=out_admin, listen_port=out_port)
        tls = ClientTls(ca=outbound.ca, server_name="outbound.bench.local") if self.edge else None
        return Endpoint(first.address, tls)

    def describe(self) -> str:
        path = "Envoy"
        if self.mtls:
            path = "edge (TLS) → mTLS → sidecar" if self.edge else "sidecar → mTLS → sidecar"
        return f"client → {path} → backend ({_describe_backend(self.backend)})"
