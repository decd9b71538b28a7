"""`make run MESH=envoy STORE=postgres` in miniature: both agent versions behind their sidecars on one PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from mesh.policy import Policy
from tests.mesh.conftest import MeshCerts, TokenIssuer, mtls_credentials
from tests.mesh.mesh_system import running_mesh
from tools.postgres_local import LocalPostgres

pytestmark = [pytest.mark.envoy, pytest.mark.slow]


async def test_a_run_created_on_the_canary_is_read_on_v1_from_the_shared_database(
    policy: Policy, mesh_certs: MeshCerts, token_issuer: TokenIssuer, postgres_cluster: LocalPostgres, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    urls = {service: postgres_cluster.create_database(f"{service}_{suffix}") for service in ("agent", "rag")}

    async with running_mesh(policy, mesh_certs, token_issuer, tmp_path, database_urls=urls) as mesh:
        credentials = grpc.ssl_channel_credentials(root_certificates=mesh_certs("edge").ca.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{mesh.edge.port}", credentials) as edge:
            created = await agent_grpc.AgentServiceStub(edge).CreateRun(
                agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question="How long do refunds take?"),
                # Pinned to the canary (test_canary.py shows the pin holds).
                metadata=(*token_issuer.bearer(), ("version", "v2")),
                timeout=10,
            )
        # Straight to agent v1's sidecar, as the gateway's sidecar would call it: v1 answers.
        v1 = await mesh.envoys["agent-v1"].listener_address("inbound")
        async with grpc.aio.secure_channel(f"localhost:{v1.port}", mtls_credentials(mesh_certs("gateway"))) as channel:
            fetched = await agent_grpc.AgentServiceStub(channel).GetRun(
                agent_pb.GetRunRequest(run_id=created.run.run_id), metadata=token_issuer.bearer(), timeout=10
            )

    assert fetched.run.run_id == created.run.run_id
    # Nothing went to the embedded default.
    assert not (tmp_path / "agent.sqlite3").exists()
