"""Fixtures for mesh tests: a dev CA on disk, stand-in backends and real Envoys on free ports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from mesh.certs import CertPaths, DevCA, cert_paths, write_mesh_certs
from mesh.envoy_config import Address, Config, sidecar_bootstrap
from mesh.envoy_process import EnvoyProcess
from mesh.local_layout import mesh_identities
from mesh.policy import Policy, load_policy
from runtime.security import MESH_REQUIRED_SCOPES
from tests.mesh.backend import Backend
from tools.dev_tokens import mint, write_key_pair

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class MeshCerts:
    directory: Path
    rogue_directory: Path

    def __call__(self, name: str) -> CertPaths:
        return cert_paths(self.directory, name)

    def rogue(self, name: str) -> CertPaths:
        """A certificate for ``name`` from a CA the mesh does not trust."""
        return cert_paths(self.rogue_directory, name)


@pytest.fixture(scope="session")
def mesh_certs(tmp_path_factory: pytest.TempPathFactory) -> MeshCerts:
    policy = load_policy()
    directory = tmp_path_factory.mktemp("certs")
    identities = mesh_identities(policy)
    # Trusted CA, but an identity no policy names.
    identities["intruder"] = f"spiffe://{policy.trust_domain}/ns/{policy.namespace}/sa/intruder"
    write_mesh_certs(directory, identities)
    rogue_directory = tmp_path_factory.mktemp("rogue-certs")
    DevCA(name="some other CA").write_identity(rogue_directory, "gateway", policy.spiffe_id("gateway"))
    return MeshCerts(directory, rogue_directory)


@dataclass(frozen=True)
class TokenIssuer:
    """The dev issuer of the mesh's tokens: its public keys in ``jwks_file``, tokens on demand."""

    private_key: Any
    kid: str
    jwks_file: Path

    def token(self, *, audience: str | None = None, ttl_seconds: int = 3600, now: float | None = None) -> str:
        """A token with every scope the mesh knows, for the policy's audience unless told otherwise."""
        policy = load_policy()
        scopes = sorted({scope for needed in MESH_REQUIRED_SCOPES.values() for scope in needed})
        return mint(
            key=self.private_key, algorithm="ES256", subject="mesh-test-user", scopes=scopes, kid=self.kid,
            issuer=policy.jwt.issuer, audience=audience or policy.jwt.audience, ttl_seconds=ttl_seconds, now=now,
        )  # fmt: skip

    def bearer(self, token: str | None = None) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {token or self.token()}"),)


@pytest.fixture(scope="session")
def token_issuer(tmp_path_factory: pytest.TempPathFactory) -> TokenIssuer:
    key_path, jwks_path, kid = write_key_pair(tmp_path_factory.mktemp("keys"), alg="ES256")
    private_key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return TokenIssuer(private_key, kid, jwks_path)


@pytest.fixture
def policy() -> Policy:
    return load_policy()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[Backend]]]:
    started: list[Backend] = []

    async def start(name: str, *, certs: CertPaths | None = None) -> Backend:
        backend = await Backend(name, certs=certs).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


@pytest.fixture
async def envoys(tmp_path: Path) -> AsyncIterator[Callable[[Config, str], Awaitable[EnvoyProcess]]]:
    started: list[EnvoyProcess] = []

    async def start(config: Config, name: str) -> EnvoyProcess:
        envoy = EnvoyProcess(config, workdir=tmp_path, name=name)
        started.append(envoy)
        await envoy.start()
        return envoy

    yield start
    for envoy in started:
        await envoy.stop()


def caller_sidecar(
    policy: Policy,
    *,
    caller: str,
    upstreams: Mapping[str, Mapping[str, Sequence[Backend | Address]]],
    certs: MeshCerts,
    app: Address | None = None,
) -> Config:
    """``caller``'s sidecar on port 0 everywhere, its callees' versions served by ``upstreams``."""
    return sidecar_bootstrap(
        policy,
        service=caller,
        version="v1",
        # Nothing in these tests calls the caller's own app.
        app=app or Address(LOOPBACK, 9),
        inbound=Address(LOOPBACK, 0),
        admin_port=0,
        outbound_ports={callee: 0 for callee in policy.callees(caller)},
        upstreams={
            callee: {
                version: [u if isinstance(u, Address) else Address(LOOPBACK, u.port) for u in instances]
                for version, instances in versions.items()
            }
            for callee, versions in upstreams.items()
        },
        certs=certs(caller),
    )


async def outbound_channel(envoy: EnvoyProcess, callee: str) -> grpc.aio.Channel:
    """What the app does: plaintext to its own sidecar's outbound port for ``callee``."""
    address = await envoy.listener_address(f"outbound_{callee}")
    return grpc.aio.insecure_channel(f"{address.host}:{address.port}")


def mtls_credentials(certs: CertPaths, *, ca: CertPaths | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(ca or certs).ca.read_bytes(),
        private_key=certs.key.read_bytes(),
        certificate_chain=certs.cert.read_bytes(),
    )


async def call(
    channel: grpc.aio.Channel,
    method: str,
    *,
    metadata: Sequence[tuple[str, str]] = (),
    deadline: float | None = 10.0,
) -> str:
    """One unary call with raw bytes; returns the name of the backend that answered."""
    stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    reply: bytes = await stub(b"", metadata=tuple(metadata), timeout=deadline)
    return reply.decode()


def tuned(policy: Policy, service: str, **updates: object) -> Policy:
    """``policy`` with some of ``service``'s settings replaced (small limits make overflow cheap to cause)."""
    changed = policy.services[service].model_copy(update=updates)
    return policy.model_copy(update={"services": {**policy.services, service: changed}})


async def eventually(read: Callable[[], Awaitable[int]], wanted: int, *, within: float = 10.0) -> int:
    """``read()`` once it reaches ``wanted`` (or its value after ``within`` seconds)."""
    for _ in range(int(within / 0.05)):
        if (value := await read()) >= wanted:
            return value
        await asyncio.sleep(0.05)
    return await read()
