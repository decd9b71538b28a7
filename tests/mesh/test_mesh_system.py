"""The real services behind Envoy: mTLS on every hop, canary pinning, and HTTP/JSON at the edge."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
import pytest_asyncio

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from agentmesh.agent.v1 import run_pb2
from mesh.policy import Policy, load_policy
from tests.grpcurl import grpcurl
from tests.mesh.conftest import MeshCerts, TokenIssuer
from tests.mesh.mesh_system import MeshSystem, running_mesh

# One mesh for the module (seconds of processes and Envoys to start): each test makes runs of its own
# and reads counters as they grow, so none depends on another's traffic.
pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(
    mesh_certs: MeshCerts, token_issuer: TokenIssuer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MeshSystem]:
    async with running_mesh(load_policy(), mesh_certs, token_issuer, tmp_path_factory.mktemp("mesh")) as started:
        yield started


@pytest_asyncio.fixture(loop_scope="module")
async def edge_channel(
    mesh: MeshSystem, mesh_certs: MeshCerts, token_issuer: TokenIssuer
) -> AsyncIterator[grpc.aio.Channel]:
    # An outside client: it trusts the edge's CA, presents no certificate, and sends its token.
    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=mesh_certs("edge").ca.read_bytes()),
        grpc.access_token_call_credentials(token_issuer.token()),
    )
    target = f"localhost:{mesh.edge.port}"
    async with grpc.aio.secure_channel(target, credentials) as channel:
        yield channel


@pytest_asyncio.fixture(loop_scope="module")
async def http(
    mesh: MeshSystem, mesh_certs: MeshCerts, token_issuer: TokenIssuer
) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cafile=str(mesh_certs("edge").ca))
    async with aiohttp.ClientSession(
        base_url=f"https://localhost:{mesh.edge.port}",
        connector=aiohttp.TCPConnector(ssl=context),
        headers={"authorization": f"Bearer {token_issuer.token()}"},
    ) as session:
        yield session


async def test_a_grpc_call_crosses_edge_gateway_and_agent_sidecars_over_mtls(
    mesh: MeshSystem, edge_channel: grpc.aio.Channel
) -> None:
    agent = agent_grpc.AgentServiceStub(edge_channel)

    created = await agent.CreateRun(
        agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question="How long do refunds take?"), timeout=10
    )
    fetched = await agent.GetRun(agent_pb.GetRunRequest(run_id=created.run.run_id), timeout=10)

    assert fetched.run.run_id == created.run.run_id
    # Each hop was a TLS handshake with a certificate the next sidecar accepted.
    assert await mesh.envoys["edge"].stat_reaching("cluster.gateway_v1.ssl.handshake", 1) >= 1
    assert await mesh.envoys["gateway-v1"].stat_reaching("http.inbound.rbac.allowed", 2) >= 2
    agent_inbound = sum([await mesh.envoys[f"agent-{v}"].stat("http.inbound.rbac.allowed") for v in ("v1", "v2")])
    assert agent_inbound >= 2


async def test_the_version_header_from_an_outside_client_reaches_the_canary(
    mesh: MeshSystem, edge_channel: grpc.aio.Channel
) -> None:
    agent = agent_grpc.AgentServiceStub(edge_channel)
    created = await agent.CreateRun(
        agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question="How long does shipping take?"), timeout=10
    )
    before = await mesh.envoys["gateway-v1"].stat("cluster.agent_v2.upstream_rq_total")

    for _ in range(5):
        await agent.GetRun(agent_pb.GetRunRequest(run_id=created.run.run_id), metadata=[("version", "v2")], timeout=10)

    after = await mesh.envoys["gateway-v1"].stat_reaching("cluster.agent_v2.upstream_rq_total", before + 5)
    assert after - before == 5


async def test_post_creates_a_run_and_get_reads_it_as_json(http: aiohttp.ClientSession) -> None:
    async with http.post(
        "/v1/runs", json={"question": "How long do refunds take?", "requestId": str(uuid.uuid4())}
    ) as created:
        assert created.status == 200, await created.text()
        assert created.content_type == "application/json"
        run = (await created.json())["run"]

    async with http.get(f"/v1/runs/{run['runId']}") as fetched:
        assert fetched.status == 200, await fetched.text()
        body = await fetched.json()

    assert body["run"]["runId"] == run["runId"]
    assert body["run"]["question"] == "How long do refunds take?"
    assert body["run"]["state"] in run_pb2.Run.State.keys()  # noqa: SIM118  # an enum wrapper, not a dict


async def test_an_unknown_run_is_http_404_with_a_json_status(http: aiohttp.ClientSession) -> None:
    async with http.get(f"/v1/runs/run_{uuid.uuid4().hex}") as response:
        assert response.status == 404
        body = await response.json(content_type=None)

    assert body["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert body["message"]


async def test_bad_input_is_http_400_naming_the_field(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/runs", json={"question": ""}) as response:
        assert response.status == 400
        body = await response.json(content_type=None)

    assert body["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    [bad_request] = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert [v["field"] for v in bad_request["fieldViolations"]] == ["question"]


async def test_grpcurl_describes_services_and_methods_through_the_edge(
    mesh: MeshSystem, mesh_certs: MeshCerts, policy: Policy
) -> None:
    # The policy lets the edge reach reflection (mesh/policy.yaml); without that this test has no subject.
    assert "/grpc.reflection.v1.ServerReflection/*" in policy.services["gateway"].callers["edge"]
    edge, ca = f"localhost:{mesh.edge.port}", mesh_certs("edge").ca

    listed = (await grpcurl(edge, "list", cacert=ca)).split()
    assert {"agentmesh.agent.v1.AgentService", "agentmesh.rag.v1.RagService"} <= set(listed)
    methods = ["agentmesh.agent.v1.AgentService.CreateRun", "agentmesh.rag.v1.RagService.Search"]
    for method in [*methods, "grpc.health.v1.Health.Check"]:
        described = await grpcurl(edge, "describe", method, cacert=ca)
        assert f"{method} is a method" in described
