"""The agent's A2A Agent Card, built in one place from settings.

Served publicly at `/.well-known/agent-card.json` by the mesh's HTTP entry (the gateway's HTTP
side) and, as the extended card, by the agent's `GetExtendedAgentCard` (which needs a token).
Both read the same settings (``AGENTMESH_<SERVICE>_A2A``), so the two cards never disagree on
where the agent is or how to authenticate.
"""

from __future__ import annotations

from a2a.types import a2a_pb2
from a2a.utils.constants import PROTOCOL_VERSION_CURRENT, TransportProtocol
from pydantic import BaseModel, ConfigDict, Field

BEARER_SCHEME = "bearer"


class AgentCardSettings(BaseModel):
    """What the card says about where and what the agent is (e.g. AGENTMESH_GATEWAY_A2A='{"grpc_url": ...}')."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The gRPC address callers use: the mesh's edge (Envoy) or the gateway, never a backend.
    # An absolute URL; https:// in production (TLS), http:// for a plaintext local run.
    grpc_url: str = Field(default="http://127.0.0.1:50051", pattern=r"^https?://[^/\s]+(/.*)?$")
    name: str = "agentmesh"
    description: str = (
        "Answers questions from its knowledge base with cited passages; answers its review rules flag"
        " wait for a human reviewer."
    )
    version: str = "1.0.0"
    documentation_url: str = "https://github.com/agentmesh/agentmesh#from-other-agents"
    provider_organization: str = "agentmesh"
    provider_url: str = "https://github.com/agentmesh/agentmesh"


_ANSWER = a2a_pb2.AgentSkill(
    id="answer-questions",
    name="Answer questions",
    description=(
        "Answers a question (the message's text) from the knowledge base. The answer is an artifact"
        ' with a text part and a data part {"citations": [...]} naming the supporting passages. An'
        " answer the review rules flag makes the task INPUT_REQUIRED until a reviewer replies."
    ),
    tags=["question-answering", "rag", "citations"],
    examples=["How long do refunds take?", "Which plans include single sign-on?"],
    input_modes=["text/plain"],
    output_modes=["text/plain", "application/json"],
)
_REVIEW = a2a_pb2.AgentSkill(
    id="review-answers",
    name="Review answers",
    description=(
        "Approves or rejects an answer waiting for review: reply to the INPUT_REQUIRED task with text"
        " starting with 'approve' or 'reject' (the rest is the comment). Needs the runs.review scope."
    ),
    tags=["human-in-the-loop", "review"],
    examples=["approve", "reject: the quoted policy is outdated"],
    input_modes=["text/plain", "application/json"],
    output_modes=["text/plain", "application/json"],
)


def build_agent_card(settings: AgentCardSettings, *, extended: bool = False) -> a2a_pb2.AgentCard:
    """The public card, or with ``extended`` the one authenticated callers get (adds the reviewer skill)."""
    return a2a_pb2.AgentCard(
        name=settings.name,
        description=settings.description,
        supported_interfaces=[
            a2a_pb2.AgentInterface(
                url=settings.grpc_url,
                protocol_binding=TransportProtocol.GRPC.value,
                protocol_version=PROTOCOL_VERSION_CURRENT,
            )
        ],
        provider=a2a_pb2.AgentProvider(organization=settings.provider_organization, url=settings.provider_url),
        version=settings.version,
        documentation_url=settings.documentation_url,
        capabilities=a2a_pb2.AgentCapabilities(streaming=True, push_notifications=True, extended_agent_card=True),
        security_schemes={
            BEARER_SCHEME: a2a_pb2.SecurityScheme(
                http_auth_security_scheme=a2a_pb2.HTTPAuthSecurityScheme(
                    scheme="Bearer",
                    bearer_format="JWT",
                    description="A JWT from the mesh's issuer, with the scopes each method needs (runs.read,"
                    " runs.write; runs.review to review).",
                )
            )
        },
        security_requirements=[a2a_pb2.SecurityRequirement(schemes={BEARER_SCHEME: a2a_pb2.StringList()})],
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain", "application/json"],
        skills=[_ANSWER, _REVIEW] if extended else [_ANSWER],
    )
