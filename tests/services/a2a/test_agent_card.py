"""The public Agent Card over HTTP: a2a-sdk's resolver validates it, and the gRPC interface it names works."""

from __future__ import annotations

import httpx
from a2a.client import A2ACardResolver
from a2a.types import a2a_pb2
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.testclient import TestClient

from runtime.a2a_card import AgentCardSettings
from services.gateway.agent_card import agent_card_routes
from tests.ports import free_ports
from tests.services.a2a.conftest import Issuer, StartSystem, sdk_client
from tests.services.a2a.test_a2a_service import ASKER, message, returning_immediately, send


async def test_the_card_validates_against_the_sdk_model_and_its_grpc_url_reaches_the_agent(
    start_system: StartSystem, issuer: Issuer
) -> None:
    # The gateway's real HTTP side (services/gateway/http_entry.py), its card naming the gateway's gRPC port.
    grpc_port, http_port = free_ports(2)  # picked together: never the same port twice
    system = await start_system(
        gateway={"port": grpc_port, "http_port": http_port, "a2a": {"grpc_url": f"http://127.0.0.1:{grpc_port}"}}
    )
    base_url = f"http://127.0.0.1:{http_port}"

    async with httpx.AsyncClient() as http:
        card = await A2ACardResolver(http, base_url).get_agent_card()
        raw = await http.get(f"{base_url}/.well-known/agent-card.json")
        revalidated = await http.get(raw.url, headers={"If-None-Match": raw.headers["ETag"]})

    # Strictly: every field the card carries is one the A2A contract defines.
    assert json_format.ParseDict(raw.json(), a2a_pb2.AgentCard(), ignore_unknown_fields=False) == card
    assert revalidated.status_code == 304
    [interface] = card.supported_interfaces
    assert (interface.url, interface.protocol_binding, interface.protocol_version) == (
        f"http://{system.gateway_address}",
        "GRPC",
        "1.0",
    )
    assert card.security_schemes["bearer"].http_auth_security_scheme.bearer_format == "JWT"
    assert [s.id for s in card.skills] == ["answer-questions"]
    assert card.capabilities.streaming and card.capabilities.push_notifications

    # A client built from the fetched card alone reaches the agent through the gateway.
    client = sdk_client(card, streaming=False)
    asker = issuer.as_("alice", *ASKER)
    task = await send(client, returning_immediately(message("How long do refunds take?")), asker)
    assert (await client.get_task(a2a_pb2.GetTaskRequest(id=task.id), context=asker)).id == task.id


def test_the_route_serves_the_card_built_from_the_settings() -> None:
    # The route on its own, as any Starlette app mounts it.
    app = Starlette(routes=agent_card_routes(AgentCardSettings(grpc_url="https://agents.example:443", name="kb")))
    with TestClient(app) as http:
        card = json_format.ParseDict(http.get("/.well-known/agent-card.json").json(), a2a_pb2.AgentCard())
    assert (card.name, card.supported_interfaces[0].url) == ("kb", "https://agents.example:443")
