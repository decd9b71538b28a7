"""Another agent at the mesh's front door: a2a-sdk's gRPC client, over TLS to the Envoy edge, with a JWT.

The edge checks the token and routes lf.a2a.v1.A2AService to the gateway, which forwards it through
the agent's canary split (v1 and v2 share one run store, so either answers for any task).
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
import pytest_asyncio
from a2a.client import A2ACardResolver, A2AClientError, Client, ClientCallContext, ClientConfig, ClientFactory
from a2a.types import a2a_pb2
from a2a.utils.constants import TransportProtocol

from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from mesh.policy import load_policy
from runtime.a2a_card import AgentCardSettings, build_agent_card
from tests.mesh.conftest import MeshCerts, TokenIssuer
from tests.mesh.mesh_system import MeshSystem, running_mesh
from tests.services.agent.test_agent_service import KNOWLEDGE

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
TaskState = a2a_pb2.TaskState


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(
    mesh_certs: MeshCerts, token_issuer: TokenIssuer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MeshSystem]:
    async with running_mesh(load_policy(), mesh_certs, token_issuer, tmp_path_factory.mktemp("mesh")) as started:
        credentials = grpc.ssl_channel_credentials(root_certificates=mesh_certs("edge").ca.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{started.edge.port}", credentials) as edge:
            await rag_grpc.RagServiceStub(edge).IngestDocuments(
                rag_pb.IngestDocumentsRequest(documents=KNOWLEDGE), metadata=token_issuer.bearer(), timeout=20
            )
        yield started


def edge_client(mesh: MeshSystem, mesh_certs: MeshCerts, *, streaming: bool) -> Client:
    """A client from the card the mesh publishes (its gRPC URL is the edge's), trusting the edge's CA."""
    card = build_agent_card(AgentCardSettings(grpc_url=f"https://localhost:{mesh.edge.port}"))
    ca = mesh_certs("edge").ca.read_bytes()

    def channel(url: str) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(urlsplit(url).netloc, grpc.ssl_channel_credentials(root_certificates=ca))

    config = ClientConfig(
        streaming=streaming, supported_protocol_bindings=[TransportProtocol.GRPC.value], grpc_channel_factory=channel
    )
    return ClientFactory(config).create(card)


def bearer(issuer: TokenIssuer) -> ClientCallContext:
    return ClientCallContext(timeout=30, service_parameters={"authorization": f"Bearer {issuer.token()}"})


def question(text: str = "How long do refunds take?") -> a2a_pb2.SendMessageRequest:
    return a2a_pb2.SendMessageRequest(
        message=a2a_pb2.Message(message_id=str(uuid.uuid4()), role=a2a_pb2.ROLE_USER, parts=[a2a_pb2.Part(text=text)])
    )


async def test_a_message_through_the_edge_completes_and_its_task_is_read_back(
    mesh: MeshSystem, mesh_certs: MeshCerts, token_issuer: TokenIssuer
) -> None:
    client = edge_client(mesh, mesh_certs, streaming=False)

    [response] = [r async for r in client.send_message(question(), context=bearer(token_issuer))]

    task = response.task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert "5 business days" in task.artifacts[0].parts[0].text
    fetched = await client.get_task(a2a_pb2.GetTaskRequest(id=task.id), context=bearer(token_issuer))
    assert fetched.status.state == TaskState.TASK_STATE_COMPLETED


async def test_a_stream_through_the_edge_ends_with_the_answer_and_completed(
    mesh: MeshSystem, mesh_certs: MeshCerts, token_issuer: TokenIssuer
) -> None:
    client = edge_client(mesh, mesh_certs, streaming=True)

    stream = [r async for r in client.send_message(question(), context=bearer(token_issuer))]

    assert stream[0].HasField("task")
    assert stream[-2].artifact_update.artifact.parts[0].text
    assert stream[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


async def test_the_edge_refuses_a_message_without_a_token(mesh: MeshSystem, mesh_certs: MeshCerts) -> None:
    client = edge_client(mesh, mesh_certs, streaming=False)

    with pytest.raises(A2AClientError) as refused:
        [r async for r in client.send_message(question(), context=ClientCallContext(timeout=10))]

    cause = refused.value.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_edge_serves_the_agent_card_without_a_token(mesh: MeshSystem, mesh_certs: MeshCerts) -> None:
    # Discovery comes before a token: the edge routes the card to the gateway's HTTP side as a public path.
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(mesh_certs("edge").ca))) as http:
        card = await A2ACardResolver(http, f"https://localhost:{mesh.edge.port}").get_agent_card()

    assert card.supported_interfaces[0].protocol_binding == "GRPC"
    assert "bearer" in card.security_schemes
