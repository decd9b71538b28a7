"""The mesh's front door: the edge refuses calls without a valid token, the apps behind it check again.

One mesh for the whole module (no test here changes what another one sees): the real services
behind their sidecars, the edge in front, a dev issuer whose JWKS the edge and the apps read.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable

import aiohttp
import grpc
import httpx2
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agentmesh.agent.v1 import agent_service_pb2 as agent_pb
from agentmesh.agent.v1 import agent_service_pb2_grpc as agent_grpc
from mesh.policy import load_policy
from tests.mesh.conftest import MeshCerts, TokenIssuer, mtls_credentials
from tests.mesh.mesh_system import MeshSystem, running_mesh
from tools.dev_tokens import generate_private_key, mint

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CREATE_RUN = "/agentmesh.agent.v1.AgentService/CreateRun"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(
    mesh_certs: MeshCerts, token_issuer: TokenIssuer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MeshSystem]:
    async with running_mesh(load_policy(), mesh_certs, token_issuer, tmp_path_factory.mktemp("mesh")) as started:
        yield started


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(mesh: MeshSystem, mesh_certs: MeshCerts) -> AsyncIterator[grpc.aio.Channel]:
    """An outside client's channel: TLS to the edge, no token of its own (each call says what it sends)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=mesh_certs("edge").ca.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{mesh.edge.port}", credentials) as channel:
        yield channel


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(mesh: MeshSystem, mesh_certs: MeshCerts) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cafile=str(mesh_certs("edge").ca))
    async with aiohttp.ClientSession(
        base_url=f"https://localhost:{mesh.edge.port}", connector=aiohttp.TCPConnector(ssl=context)
    ) as session:
        yield session


def _create(question: str = "How long do refunds take?") -> agent_pb.CreateRunRequest:
    return agent_pb.CreateRunRequest(request_id=str(uuid.uuid4()), question=question)


def _other_issuers_token(issuer: TokenIssuer) -> str:
    """Right claims, right key id, signed by a key the issuer never published."""
    policy = load_policy()
    return mint(
        key=generate_private_key("ES256"), algorithm="ES256", subject="mallory", scopes=["runs.write"],
        kid=issuer.kid, issuer=policy.jwt.issuer, audience=policy.jwt.audience,
    )  # fmt: skip


# What an outsider might send instead of a valid token: header lines, or none at all.
BAD_CREDENTIALS: dict[str, Callable[[TokenIssuer], tuple[tuple[str, str], ...]]] = {
    "no token": lambda issuer: (),
    "garbage": lambda issuer: (("authorization", "Bearer not-a-jwt"),),
    "not a bearer token": lambda issuer: (("authorization", f"Basic {issuer.token()}"),),
    "expired": lambda issuer: issuer.bearer(issuer.token(ttl_seconds=60, now=time.time() - 3600)),
    "wrong audience": lambda issuer: issuer.bearer(issuer.token(audience="some-other-api")),
    "unknown signing key": lambda issuer: issuer.bearer(_other_issuers_token(issuer)),
}


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
async def test_a_grpc_call_without_a_valid_token_is_unauthenticated_at_the_edge(
    mesh: MeshSystem,
    edge: grpc.aio.Channel,
    token_issuer: TokenIssuer,
    credentials: Callable[[TokenIssuer], tuple[tuple[str, str], ...]],
) -> None:
    edge_proxy = mesh.envoys["edge"]
    forwarded_before = await edge_proxy.stat("cluster.gateway_v1.upstream_rq_total")
    denied_before = await edge_proxy.stat("http.edge.jwt_authn.denied")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await agent_grpc.AgentServiceStub(edge).CreateRun(_create(), metadata=credentials(token_issuer), timeout=10)

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
    assert await edge_proxy.stat_reaching("http.edge.jwt_authn.denied", denied_before + 1) == denied_before + 1
    # Refused at the edge: nothing went on to the gateway.
    assert await edge_proxy.stat("cluster.gateway_v1.upstream_rq_total") == forwarded_before


async def test_a_valid_token_reaches_the_agent_which_records_its_subject(
    edge: grpc.aio.Channel, token_issuer: TokenIssuer
) -> None:
    agent = agent_grpc.AgentServiceStub(edge)

    created = await agent.CreateRun(_create(), metadata=token_issuer.bearer(), timeout=10)
    fetched = await agent.GetRun(
        agent_pb.GetRunRequest(run_id=created.run.run_id), metadata=token_issuer.bearer(), timeout=10
    )

    # The creator is the token's subject: the token went through the edge to the agent, not "anonymous".
    assert fetched.run.creator == "mesh-test-user"


@pytest.mark.parametrize(
    "credentials",
    [BAD_CREDENTIALS["no token"], BAD_CREDENTIALS["garbage"], BAD_CREDENTIALS["wrong audience"]],
    ids=["no token", "garbage", "wrong audience"],
)
async def test_an_http_call_without_a_valid_token_is_401_with_a_json_status(
    http: aiohttp.ClientSession,
    token_issuer: TokenIssuer,
    credentials: Callable[[TokenIssuer], tuple[tuple[str, str], ...]],
) -> None:
    async with http.post(
        "/v1/runs", json={"question": "How long do refunds take?"}, headers=dict(credentials(token_issuer))
    ) as response:
        assert response.status == 401
        assert response.content_type == "application/json"
        body = await response.json()

    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert body["message"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command line client")
async def test_curl_posting_over_http2_without_a_token_reads_the_401(mesh: MeshSystem, mesh_certs: MeshCerts) -> None:
    # The edge answers once the body is in; a refusal mid-upload would end the HTTP/2 stream
    # with RST_STREAM(NO_ERROR), which curl 7.x reports as "(92) Stream error" instead of the 401.
    process = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--http2", "--cacert", str(mesh_certs("edge").ca), "--write-out", "\n%{http_code}",
        "-X", "POST", f"https://localhost:{mesh.edge.port}/v1/runs", "-d", '{"question": "How long do refunds take?"}',
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await process.communicate()
    body, _, status = output.decode().rpartition("\n")

    assert (process.returncode, status) == (0, "401"), output
    assert json.loads(body)["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


async def test_an_http_get_without_a_token_is_401_with_a_json_status_too(http: aiohttp.ClientSession) -> None:
    # No body, so no content type: still an HTTP caller, answered in JSON.
    async with http.get(f"/v1/runs/run_{uuid.uuid4().hex}") as response:
        assert response.status == 401
        body = await response.json()

    assert body["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert load_policy().jwt.issuer in body["message"]  # says whose token to bring


async def test_a_streaming_call_with_a_valid_token_streams_through_the_edge(
    edge: grpc.aio.Channel, token_issuer: TokenIssuer
) -> None:
    agent = agent_grpc.AgentServiceStub(edge)
    created = await agent.CreateRun(_create(), metadata=token_issuer.bearer(), timeout=10)

    watch = agent.WatchRun(
        agent_pb.WatchRunRequest(run_id=created.run.run_id), metadata=token_issuer.bearer(), timeout=20
    )
    events = [response async for response in watch]

    assert events, "the watch ended without a single event"


async def test_an_http_call_with_a_valid_token_creates_a_run(
    http: aiohttp.ClientSession, token_issuer: TokenIssuer
) -> None:
    async with http.post(
        "/v1/runs",
        json={"question": "How long do refunds take?", "requestId": str(uuid.uuid4())},
        headers=dict(token_issuer.bearer()),
    ) as response:
        assert response.status == 200, await response.text()
        run = (await response.json())["run"]

    assert run["creator"] == "mesh-test-user"


async def test_health_stays_public_through_the_edge(edge: grpc.aio.Channel) -> None:
    reply = await health_pb2_grpc.HealthStub(edge).Check(health_pb2.HealthCheckRequest(), timeout=10)

    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_behind_the_edge_the_gateway_still_refuses_a_call_without_a_token(
    mesh: MeshSystem, mesh_certs: MeshCerts
) -> None:
    # As if the edge were bypassed or compromised: its own certificate, straight to the gateway's sidecar.
    inbound = await mesh.envoys["gateway-v1"].listener_address("inbound")
    async with grpc.aio.secure_channel(
        f"localhost:{inbound.port}", mtls_credentials(mesh_certs("edge"))
    ) as around_the_edge:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await agent_grpc.AgentServiceStub(around_the_edge).CreateRun(_create(), timeout=10)

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_mcp_client_calls_a_tool_through_the_edge(
    mesh: MeshSystem, mesh_certs: MeshCerts, token_issuer: TokenIssuer
) -> None:
    """The mcp SDK's own client, over HTTPS to the edge, which routes /mcp to the gateway's HTTP side."""
    context = ssl.create_default_context(cafile=str(mesh_certs("edge").ca))
    headers = {"authorization": f"Bearer {token_issuer.token()}"}
    url = f"https://localhost:{mesh.edge.port}/mcp"
    async with (
        httpx2.AsyncClient(headers=headers, verify=context, timeout=20) as client,
        Client(streamable_http_client(url, http_client=client)) as mcp,
    ):
        tools = {tool.name for tool in (await mcp.list_tools()).tools}
        created = await mcp.call_tool("AgentService_CreateRun", {"question": "How long do refunds take?"})

    assert "AgentService_CreateRun" in tools
    assert not created.is_error, created.content
    assert created.structured_content["run"]["creator"] == "mesh-test-user"


async def test_mcp_without_a_token_is_401_with_a_bearer_challenge_at_the_edge(
    mesh: MeshSystem, http: aiohttp.ClientSession
) -> None:
    edge_proxy = mesh.envoys["edge"]
    forwarded_before = await edge_proxy.stat("cluster.gateway_v1.upstream_rq_total")
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with http.post("/mcp", json=request, headers={"accept": "application/json, text/event-stream"}) as response:
        assert response.status == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert await edge_proxy.stat("cluster.gateway_v1.upstream_rq_total") == forwarded_before


async def test_the_mcp_resource_metadata_is_public_at_the_edge(http: aiohttp.ClientSession) -> None:
    """Where an MCP client without a token learns whose token to bring (RFC 9728 well-known URI)."""
    async with http.get("/.well-known/oauth-protected-resource/mcp") as response:
        assert response.status == 200
        metadata = await response.json()

    assert metadata["resource"].endswith("/mcp")
    assert [server.rstrip("/") for server in metadata["authorization_servers"]] == [load_policy().jwt.issuer]
