"""The public Agent Card over HTTP: a2a-sdk's resolver validates it, and the gRPC interface it names works."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import httpx
import uvicorn
from a2a.client import A2ACardResolver
from a2a.types import a2a_pb2
from google.protobuf import json_format
from starlette.applications import Starlette

from runtime.a2a_card import AgentCardSettings
from services.gateway.agent_card import agent_card_routes
from tests.services.a2a.conftest import Issuer, StartSystem, sdk_client
from tests.services.a2a.test_a2a_service import ASKER, message, returning_immediately, send


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    """``app`` on a free loopback port; the socket listens before uvicorn starts, so requests just queue."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    with socket.create_server(("127.0.0.1", 0)) as sock:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            await task


async def test_the_card_validates_against_the_sdk_model_and_its_grpc_url_reaches_the_agent(
    start_system: StartSystem, issuer: Issuer
) -> None:
    system = await start_system()
    app = Starlette(routes=agent_card_routes(AgentCardSettings(grpc_url=f"http://{system.gateway_address}")))

    async with serving(app) as base_url, httpx.AsyncClient() as http:
        card = await A2ACardResolver(http, base_url).get_agent_card()
        raw = await http.get(f"{base_url}/.well-known/agent-card.json")
        revalidated = await http.get(raw.url, headers={"If-None-Match": raw.headers["ETag"]})

    # Strictly: every field the card carries is one the A2A contract defines.
    assert json_format.ParseDict(raw.json(), a2a_pb2.AgentCard(), ignore_unknown_fields=False) == card
    assert revalidated.status_code == 304
    [interface] = card.supported_interfaces
    assert (interface.protocol_binding, interface.protocol_version) == ("GRPC", "1.0")
    assert card.security_schemes["bearer"].http_auth_security_scheme.bearer_format == "JWT"
    assert [s.id for s in card.skills] == ["answer-questions"]
    assert card.capabilities.streaming and card.capabilities.push_notifications

    # A client built from the fetched card alone reaches the agent through the gateway.
    client = sdk_client(card, streaming=False)
    asker = issuer.as_("alice", *ASKER)
    task = await send(client, returning_immediately(message("How long do refunds take?")), asker)
    assert (await client.get_task(a2a_pb2.GetTaskRequest(id=task.id), context=asker)).id == task.id
