"""The real system with auth on, reached the way another agent would: a2a-sdk's own gRPC client."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
from a2a.client import Client, ClientCallContext, ClientConfig, ClientFactory
from a2a.types import a2a_pb2
from a2a.utils.constants import TransportProtocol

from agentmesh.rag.v1 import rag_service_pb2 as rag_pb
from agentmesh.rag.v1 import rag_service_pb2_grpc as rag_grpc
from runtime.a2a_card import AgentCardSettings, build_agent_card
from runtime.bootstrap import ManagedServer
from runtime.security import AuthSettings
from tests.services import issuer as issuing
from tests.services.agent.test_agent_service import KNOWLEDGE
from tests.system import start_agent, start_gateway, start_rag

STOP_TIMEOUT_S = 30
READ, WRITE, REVIEW = "runs.read", "runs.write", "runs.review"


def grpc_channel_for(url: str) -> grpc.aio.Channel:
    """What an A2A client does with a card's gRPC URL: http:// is plaintext, https:// is TLS."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return grpc.aio.secure_channel(parts.netloc, grpc.ssl_channel_credentials())
    return grpc.aio.insecure_channel(parts.netloc)


def sdk_client(card: a2a_pb2.AgentCard, *, streaming: bool = True) -> Client:
    config = ClientConfig(
        streaming=streaming,
        supported_protocol_bindings=[TransportProtocol.GRPC.value],
        grpc_channel_factory=grpc_channel_for,
    )
    return ClientFactory(config).create(card)


def card_for(address: str) -> a2a_pb2.AgentCard:
    return build_agent_card(AgentCardSettings(grpc_url=f"http://{address}"))


class Issuer(issuing.Issuer):
    def as_(self, subject: str, *scopes: str, timeout: float = 20) -> ClientCallContext:
        """Call options carrying a bearer token (the SDK sends service parameters as gRPC metadata)."""
        return ClientCallContext(
            timeout=timeout, service_parameters={"authorization": f"Bearer {self.token(subject, *scopes)}"}
        )


@pytest.fixture(scope="session")
def issuer() -> Issuer:
    return Issuer.generate(kid="a2a-test")


@pytest.fixture
def auth(tmp_path: Path, issuer: Issuer) -> AuthSettings:
    return issuer.auth_settings(tmp_path)


@dataclass
class A2ASystem:
    rag: ManagedServer
    agents: list[ManagedServer]
    gateway: ManagedServer

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def agent_address(self, index: int) -> str:
        return f"127.0.0.1:{self.agents[index].port}"


StartSystem = Callable[..., Any]


@pytest.fixture
async def start_system(tmp_path: Path, auth: AuthSettings, issuer: Issuer) -> AsyncIterator[StartSystem]:
    """``await start_system(replicas=1, gateway={...}, **agent_settings)``: RAG with KNOWLEDGE, agents and a
    gateway (with those settings), all with auth."""
    started: list[ManagedServer] = []

    async def start(replicas: int = 1, gateway: dict[str, object] | None = None, **agent_settings: object) -> A2ASystem:
        rag = await start_rag(tmp_path / "rag", auth=auth)
        started.append(rag)
        # Lexical answers (no model to load at every start) and no low-confidence parking: these
        # tests are about the protocol; a sensitive term ("password") still parks a run for review.
        agent_settings = {"decision_engine_options": {"semantic": False}, "review_min_confidence": 0.0} | agent_settings
        agents = []
        for index in range(replicas):
            agent = await start_agent(
                tmp_path / f"agent-{index}",
                f"127.0.0.1:{rag.port}",
                auth=auth,
                instance_id=f"agent-{index}",
                **agent_settings,
            )
            started.append(agent)
            agents.append(agent)
        front = await start_gateway(
            {"agent": [f"127.0.0.1:{a.port}" for a in agents], "rag": [f"127.0.0.1:{rag.port}"]},
            auth=auth,
            **(gateway or {}),
        )
        started.append(front)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            await rag_grpc.RagServiceStub(channel).IngestDocuments(
                rag_pb.IngestDocumentsRequest(documents=KNOWLEDGE),
                metadata=(("authorization", f"Bearer {issuer.token('loader', 'documents.write')}"),),
                timeout=10,
            )
        return A2ASystem(rag=rag, agents=agents, gateway=front)

    yield start
    for server in reversed(started):
        try:
            await asyncio.wait_for(server.stop(), STOP_TIMEOUT_S)
        except TimeoutError:
            # A stop that hangs is a bug to see, not a test to time out: show what it waits on.
            for task in asyncio.all_tasks():
                task.print_stack(limit=12, file=sys.stderr)
            raise
