"""Inbound sidecars: mTLS on every hop, and only the callers the policy names, per method."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

import grpc
import pytest

from mesh.certs import CertPaths
from mesh.envoy_config import Address, Config, sidecar_bootstrap
from mesh.envoy_process import EnvoyProcess
from mesh.policy import Policy
from tests.mesh.backend import Backend
from tests.mesh.conftest import (
    LOOPBACK,
    MeshCerts,
    call,
    caller_sidecar,
    eventually,
    mtls_credentials,
    outbound_channel,
)

pytestmark = pytest.mark.envoy

SEARCH = "/agentmesh.rag.v1.RagService/Search"
INGEST = "/agentmesh.rag.v1.RagService/IngestDocuments"
# The sidecar's certificate names 127.0.0.1 and localhost; grpc checks the latter.
_TARGET_NAME = (("grpc.ssl_target_name_override", "localhost"),)


class RagSidecar(NamedTuple):
    app: Backend
    envoy: EnvoyProcess
    inbound: Address


@pytest.fixture
async def rag_sidecar(
    policy: Policy,
    mesh_certs: MeshCerts,
    backends: Callable[..., Awaitable[Backend]],
    envoys: Callable[[Config, str], Awaitable[EnvoyProcess]],
) -> RagSidecar:
    """The rag app behind its inbound sidecar."""
    app = await backends("rag-app")
    config = sidecar_bootstrap(
        policy,
        service="rag",
        version="v1",
        app=Address(LOOPBACK, app.port),
        inbound=Address(LOOPBACK, 0),
        admin_port=0,
        outbound_ports={},
        upstreams={},
        certs=mesh_certs("rag"),
    )
    envoy = await envoys(config, "rag-sidecar")
    return RagSidecar(app, envoy, await envoy.listener_address("inbound"))


async def _call_as(inbound: Address, certs: CertPaths | None, method: str, *, trust: CertPaths) -> str:
    target = f"{inbound.host}:{inbound.port}"
    if certs is None:
        channel = grpc.aio.insecure_channel(target)
    else:
        channel = grpc.aio.secure_channel(target, mtls_credentials(certs, ca=trust), options=_TARGET_NAME)
    async with channel:
        return await call(channel, method, deadline=5)


async def _ssl_stat(envoy: EnvoyProcess, suffix: str) -> int:
    """A TLS counter of the inbound listener (named after its address), once it is non-zero."""

    async def read() -> int:
        stats = await envoy.stats("listener.")
        return sum(value for name, value in stats.items() if name.endswith(suffix))

    return await eventually(read, 1)


async def test_an_allowed_caller_reaches_the_app_and_the_app_sees_its_spiffe_id(
    policy: Policy, mesh_certs: MeshCerts, rag_sidecar: RagSidecar
) -> None:
    app, _, inbound = rag_sidecar

    assert await _call_as(inbound, mesh_certs("agent"), SEARCH, trust=mesh_certs("rag")) == "rag-app"
    assert f"URI={policy.spiffe_id('agent')}" in app.last_metadata["x-forwarded-client-cert"]


@pytest.mark.parametrize(
    ("caller", "refusal_stat"),
    [
        ("plaintext", None),
        # Right SPIFFE ID (the gateway is an allowed caller), wrong issuer.
        ("rogue gateway", "ssl.fail_verify_error"),
        ("intruder", "ssl.fail_verify_san"),
    ],
    ids=[
        "a plaintext client",
        "a client certificate from another CA",
        "a trusted certificate with an identity the policy does not name",
    ],
)
async def test_a_caller_without_an_allowed_identity_is_refused(
    rag_sidecar: RagSidecar, mesh_certs: MeshCerts, caller: str, refusal_stat: str | None
) -> None:
    app, envoy, inbound = rag_sidecar
    certs = {"plaintext": None, "rogue gateway": mesh_certs.rogue("gateway"), "intruder": mesh_certs("intruder")}

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call_as(inbound, certs[caller], SEARCH, trust=mesh_certs("rag"))

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    if refusal_stat is not None:
        assert await _ssl_stat(envoy, refusal_stat) >= 1
    assert app.total_calls == 0


async def test_an_allowed_caller_is_denied_methods_its_policy_does_not_grant(
    policy: Policy, mesh_certs: MeshCerts, rag_sidecar: RagSidecar
) -> None:
    assert INGEST not in policy.services["rag"].callers["agent"]
    app, envoy, inbound = rag_sidecar

    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _call_as(inbound, mesh_certs("agent"), INGEST, trust=mesh_certs("rag"))

    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await envoy.stat_reaching("http.inbound.rbac.denied", 1) == 1
    # The gateway may ingest.
    assert await _call_as(inbound, mesh_certs("gateway"), INGEST, trust=mesh_certs("rag")) == "rag-app"
    assert app.calls[INGEST] == 1


async def test_two_sidecars_carry_a_call_over_mtls_with_the_callers_identity(
    policy: Policy, mesh_certs: MeshCerts, backends: Callable[..., Awaitable[Backend]],
    envoys: Callable[[Config, str], Awaitable[EnvoyProcess]], rag_sidecar: RagSidecar,
) -> None:  # fmt: skip
    app, rag_envoy, inbound = rag_sidecar
    agent_stand_in = await backends("agent-v1", certs=mesh_certs("agent"))
    config = caller_sidecar(
        policy,
        caller="gateway",
        upstreams={"agent": {"v1": [agent_stand_in], "v2": [agent_stand_in]}, "rag": {"v1": [inbound]}},
        certs=mesh_certs,
    )
    gateway_sidecar = await envoys(config, "gateway-sidecar")

    async with await outbound_channel(gateway_sidecar, "rag") as channel:
        assert await call(channel, INGEST) == "rag-app"

    assert f"URI={policy.spiffe_id('gateway')}" in app.last_metadata["x-forwarded-client-cert"]
    assert await gateway_sidecar.stat_reaching("cluster.rag_v1.ssl.handshake", 1) >= 1
    assert await rag_envoy.stat_reaching("http.inbound.rbac.allowed", 1) >= 1
