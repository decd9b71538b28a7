"""`/.well-known/agent-card.json`: the public A2A Agent Card, on the gateway's HTTP side.

The card is built once from ``AGENTMESH_GATEWAY_A2A`` (runtime/a2a_card.py, the same builder as
the agent's authenticated ``GetExtendedAgentCard``) and served by a2a-sdk's own route, which sends
an ETag and answers revalidations with 304. It is public, as discovery needs: what it names
(the gRPC interface, the bearer-JWT scheme) is what a caller needs before it has a token.
"""

from __future__ import annotations

from a2a.server.routes.agent_card_routes import create_agent_card_routes
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from starlette.routing import BaseRoute

from runtime.a2a_card import AgentCardSettings, build_agent_card

# Revalidated by ETag after this; a card changes only with a redeploy.
CACHE_CONTROL = "public, max-age=300"


def agent_card_routes(settings: AgentCardSettings) -> list[BaseRoute]:
    """The route serving the card at AGENT_CARD_WELL_KNOWN_PATH, for the HTTP entry to mount."""
    routes: list[BaseRoute] = list(
        create_agent_card_routes(
            build_agent_card(settings), card_url=AGENT_CARD_WELL_KNOWN_PATH, cache_control=CACHE_CONTROL
        )
    )
    return routes
