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

from bench import credentials, envoy
from bench.backend import BackendSpec
from bench.credentials import Credentials
from bench.payload import SERVICE
from bench.processes import REPO, Child, ProcessGroup, python_argv, python_env
from bench.stacks import NEEDS_AUTH, NEEDS_POSTGRES, NEEDS_REDIS
from mesh.certs import cert_paths, write_mesh_certs
from mesh.edge_config import edge_bootstrap
from mesh.envoy_config import Address, sidecar_bootstrap
from mesh.local_layout import LOOPBACK, mesh_identities
from mesh.policy import Policy, Proxy, load_policy
from runtime.ports import free_port
from tools.postgres_local import LocalPostgres

DESCRIPTOR_SET_PATH = REPO / "gen" / "agentmesh.pb"


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
    # Sent on every call (a bearer token when the servers check one).
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.address}"


class Topology(Protocol):
    def start(self, group: ProcessGroup) -> Endpoint: ...

    def describe(self) -> str: ...


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


def start_postgres(group: ProcessGroup) -> str:
    """A throwaway PostgreSQL cluster (tools/postgres_local.py, fsync off) in the work dir; returns its URL."""
    cluster = LocalPostgres(group.work_dir / "postgres")
    url = cluster.start()
    group.on_stop(lambda: cluster.stop(mode="immediate"))
    return url


def needs_auth(spec: BackendSpec) -> bool:
    return bool(NEEDS_AUTH.intersection(spec.interceptors))


def issue_credentials(group: ProcessGroup) -> Credentials:
    return credentials.issue(group.work_dir / "keys")


def start_backend(
    group: ProcessGroup, spec: BackendSpec, role: str = "backend", *, creds: Credentials | None = None
) -> Child:
    if needs_auth(spec):
        if creds is None:
            raise ValueError(f"{spec.interceptors} check tokens: pass credentials")
        spec = replace(spec, options=replace(spec.options, jwks_file=str(creds.jwks_file)))
    if NEEDS_REDIS.intersection(spec.interceptors) and spec.options.redis_url is None:
        spec = replace(spec, options=replace(spec.options, redis_url=start_redis(group)))
    if NEEDS_POSTGRES.intersection(spec.interceptors) and spec.options.postgres_url is None:
        spec = replace(spec, options=replace(spec.options, postgres_url=start_postgres(group)))
    data_dir = group.work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    spec = replace(spec, options=replace(spec.options, data_dir=str(data_dir)))
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
        creds = issue_credentials(group) if needs_auth(self.backend) else None
        backend = start_backend(group, self.backend, creds=creds)
        return Endpoint(backend.address, headers=(creds.header,) if creds else ())

    def describe(self) -> str:
        return f"client → backend ({_describe_backend(self.backend)})"


@dataclass(frozen=True)
class ViaGateway:
    """client → gateway (`python -m services.gateway`) → backend."""

    backend: BackendSpec = field(default_factory=BackendSpec)
    # The gateway verifies tokens too (AGENTMESH_GATEWAY_AUTH), as it does in production.
    gateway_auth: bool = False
    gateway_env: tuple[tuple[str, str], ...] = ()

    def start(self, group: ProcessGroup) -> Endpoint:
        creds = issue_credentials(group) if self.gateway_auth or needs_auth(self.backend) else None
        backend = start_backend(group, self.backend, creds=creds)
        auth_env = {"AGENTMESH_GATEWAY_AUTH": json.dumps({"jwks_file": str(creds.jwks_file)})} if creds else {}
        port_file = group.port_file("gateway")
        env = python_env(
            {
                "AGENTMESH_GATEWAY_PORT": "0",
                "AGENTMESH_GATEWAY_PORT_FILE": str(port_file),
                "AGENTMESH_GATEWAY_ROUTES": json.dumps({SERVICE: "agent"}),
                "AGENTMESH_GATEWAY_BACKENDS": json.dumps({"agent": [backend.address]}),
                "AGENTMESH_GATEWAY_DRAIN_DELAY_S": "0",
                "AGENTMESH_GATEWAY_GRACE_PERIOD_S": "1",
                **(auth_env if self.gateway_auth else {}),
                **dict(self.gateway_env),
            }
        )
        gateway = group.start("gateway", python_argv("services.gateway"), env=env, port_file=port_file)
        return Endpoint(gateway.address, headers=(creds.header,) if creds else ())

    def describe(self) -> str:
        gateway = "gateway (auth on)" if self.gateway_auth else "gateway"
        return f"client → {gateway} → backend ({_describe_backend(self.backend)})"


@dataclass(frozen=True)
class ViaFloorProxy:
    """client → the least grpc.aio forwarder (`bench.floor_proxy`) → backend: the gateway's floor."""

    backend: BackendSpec = field(default_factory=BackendSpec)

    def start(self, group: ProcessGroup) -> Endpoint:
        backend = start_backend(group, self.backend)
        port_file = group.port_file("gateway")
        argv = python_argv("bench.floor_proxy", "--upstream", backend.address, "--port-file", str(port_file))
        return Endpoint(group.start("gateway", argv, env=python_env(), port_file=port_file).address)

    def describe(self) -> str:
        return f"client → grpc.aio forwarder (no chain, no policies) → backend ({_describe_backend(self.backend)})"


@dataclass(frozen=True)
class ViaEnvoy:
    """client → Envoy (`bench.envoy.plain_proxy`: plaintext, router only) → backend."""

    backend: BackendSpec = field(default_factory=BackendSpec)

    def start(self, group: ProcessGroup) -> Endpoint:
        backend = start_backend(group, self.backend)
        listen, admin = free_port(), free_port()
        config = envoy.plain_proxy(listen_port=listen, admin_port=admin, upstream_port=backend.port)
        return Endpoint(envoy.start(group, "sidecar", config, admin_port=admin, listen_port=listen).address)

    def describe(self) -> str:
        return f"client → Envoy → backend ({_describe_backend(self.backend)})"


def _mesh_sidecar(
    group: ProcessGroup,
    policy: Policy,
    certs_dir: Path,
    *,
    role: str,
    service: str,
    app_port: int,
    upstream_inbound: int | None = None,
) -> tuple[Child, int, dict[str, int]]:
    """The mesh's sidecar for `service` (rendered by `mesh.envoy_config`, as `make run MESH=envoy` does).

    Every callee's versions point at `upstream_inbound` (the one sidecar the bench calls through)
    or, for callees the bench never calls, at a closed port. Returns the child, its inbound port
    and its outbound port per callee.
    """
    unused = free_port()
    inbound, admin = free_port(), free_port()
    outbound = {callee: free_port() for callee in policy.callees(service)}
    upstreams = {
        callee: {
            version: [Address(LOOPBACK, upstream_inbound or unused)] for version in policy.services[callee].versions
        }
        for callee in outbound
    }
    config = sidecar_bootstrap(
        policy,
        service=service,
        version=policy.services[service].versions[0],
        app=Address(LOOPBACK, app_port),
        inbound=Address(LOOPBACK, inbound),
        admin_port=admin,
        outbound_ports=outbound,
        upstreams=upstreams,
        certs=cert_paths(certs_dir, service),
    )
    child = envoy.start(
        group, role, config, admin_port=admin, listen_port=inbound, concurrency=policy.proxy.worker_threads()
    )
    return child, inbound, outbound


@dataclass(frozen=True)
class ViaMeshSidecars:
    """The mesh's service-to-service path with its real sidecar configs: the caller's sidecar
    (plaintext on loopback) → mTLS + RBAC → the callee's sidecar → backend, the bench backend
    standing in for the agent service and the client for the gateway."""

    backend: BackendSpec = field(default_factory=BackendSpec)
    # False: the same configs with Envoy's defaults instead of the policy's `proxy` tuning (one
    # worker, request ids, dynamic stats, x-envoy headers), i.e. the mesh before it was tuned.
    tuned: bool = True

    def start(self, group: ProcessGroup) -> Endpoint:
        policy = load_policy()
        if not self.tuned:
            policy = policy.model_copy(update={"proxy": Proxy()})
        certs_dir = group.work_dir / "certs"
        write_mesh_certs(certs_dir, mesh_identities(policy))
        backend = start_backend(group, self.backend)
        _, agent_inbound, _ = _mesh_sidecar(
            group, policy, certs_dir, role="sidecar", service="agent", app_port=backend.port
        )
        # The caller's app is the client itself; its sidecar's own app port is never used.
        _, _, outbound = _mesh_sidecar(
            group, policy, certs_dir, role="outbound", service="gateway", app_port=free_port(),
            upstream_inbound=agent_inbound,
        )  # fmt: skip
        return Endpoint(f"{LOOPBACK}:{outbound['agent']}")

    def describe(self) -> str:
        path = f"client → caller's sidecar → mTLS → callee's sidecar → backend ({_describe_backend(self.backend)})"
        return path if self.tuned else f"{path}, Envoy defaults"


@dataclass(frozen=True)
class ViaMeshInbound:
    """One mesh sidecar hop with mTLS: the client presents the gateway's certificate to the agent's
    sidecar (mTLS + RBAC) → backend. h2load cannot present a client certificate, so this one is for
    the Python client."""

    backend: BackendSpec = field(default_factory=BackendSpec)

    def start(self, group: ProcessGroup) -> Endpoint:
        policy = load_policy()
        certs_dir = group.work_dir / "certs"
        write_mesh_certs(certs_dir, mesh_identities(policy))
        backend = start_backend(group, self.backend)
        _, inbound, _ = _mesh_sidecar(group, policy, certs_dir, role="sidecar", service="agent", app_port=backend.port)
        caller = cert_paths(certs_dir, "gateway")
        return Endpoint(
            f"{LOOPBACK}:{inbound}", ClientTls(ca=caller.ca, cert=caller.cert, key=caller.key, server_name="localhost")
        )

    def describe(self) -> str:
        return f"client (mTLS) → callee's sidecar → backend ({_describe_backend(self.backend)})"


@dataclass(frozen=True)
class ViaMeshEdge:
    """The mesh's way in, with its real configs: TLS to the edge Envoy (JWT check, gRPC-JSON
    transcoder, routes) → mTLS + RBAC → the gateway's sidecar → backend (standing in for the gateway)."""

    backend: BackendSpec = field(default_factory=BackendSpec)

    def start(self, group: ProcessGroup) -> Endpoint:
        policy = load_policy()
        certs_dir = group.work_dir / "certs"
        write_mesh_certs(certs_dir, mesh_identities(policy))
        # The edge refuses calls without a token, so every call carries one.
        creds = issue_credentials(group)
        backend = start_backend(group, self.backend, creds=creds if needs_auth(self.backend) else None)
        _, gateway_inbound, _ = _mesh_sidecar(
            group, policy, certs_dir, role="sidecar", service="gateway", app_port=backend.port
        )
        listen, admin = free_port(), free_port()
        config = edge_bootstrap(
            policy,
            listen=Address(LOOPBACK, listen),
            admin_port=admin,
            upstreams={v: [Address(LOOPBACK, gateway_inbound)] for v in policy.services[policy.edge.upstream].versions},
            certs=cert_paths(certs_dir, "edge"),
            descriptor_set=DESCRIPTOR_SET_PATH,
            jwks_file=creds.jwks_file,
        )
        edge = envoy.start(group, "edge", config, admin_port=admin, listen_port=listen)
        tls = ClientTls(ca=certs_dir / "ca.pem", server_name="localhost")
        return Endpoint(edge.address, tls, headers=(creds.header,))

    def describe(self) -> str:
        return f"client → TLS + JWT → edge → mTLS → gateway's sidecar → backend ({_describe_backend(self.backend)})"
