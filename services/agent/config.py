"""Settings of the agent service (env prefix `AGENTMESH_AGENT_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from runtime.config import ServiceSettings
from runtime.resilience import UpstreamResilience


class AgentSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTMESH_AGENT_", env_file=".env", extra="ignore", frozen=True)

    port: int = Field(default=50052, ge=0, le=65535)
    # Where the RAG service is (static discovery, the embedded default).
    rag_endpoints: list[str] = Field(default_factory=lambda: ["127.0.0.1:50053"])
    retrieval_top_k: int = Field(default=3, ge=1, le=50)
    retrieval_timeout_s: float = Field(default=2.0, gt=0)
    # Calls with side effects take idempotency keys; CreateRun's AIP-155 request_id is one too.
    idempotent_methods: dict[str, str] = Field(
        default_factory=lambda: {
            "/agentmesh.agent.v1.AgentService/CreateRun": "request_id",
            "/agentmesh.agent.v1.AgentService/CancelRun": "",
            "/agentmesh.agent.v1.AgentService/SubmitReview": "",
        }
    )
    # Retries and a circuit breaker on the calls to RAG.
    upstream_resilience: UpstreamResilience = Field(default_factory=UpstreamResilience)
