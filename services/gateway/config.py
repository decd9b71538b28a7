"""Settings of the gateway (env prefix `AGENTMESH_GATEWAY_`).

Routes are data: `AGENTMESH_GATEWAY_ROUTES='{"agentmesh.agent.v1.AgentService": "agent"}'` maps a
fully-qualified service to a backend name, and `AGENTMESH_GATEWAY_BACKENDS` maps each backend
name to its endpoints (static discovery, the embedded default).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AnyHttpUrl, Field, model_validator
from pydantic_settings import SettingsConfigDict

from interceptors.rate_limit import RateLimitPolicy
from runtime.a2a_card import AgentCardSettings
from runtime.config import ServiceSettings
from runtime.resilience import UpstreamResilience

DEFAULT_DESCRIPTOR_SET = Path(__file__).resolve().parents[2] / "gen" / "agentmesh.pb"


class GatewaySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTMESH_GATEWAY_", env_file=".env", extra="ignore", frozen=True)

    port: int = Field(default=50051, ge=0, le=65535)
    descriptor_set: Path = DEFAULT_DESCRIPTOR_SET
    routes: dict[str, str] = Field(
        default_factory=lambda: {
            "agentmesh.agent.v1.AgentService": "agent",
            "agentmesh.rag.v1.RagService": "rag",
            # A2A (the vendored lf.a2a.v1 contract, in the descriptor set): the agent serves it.
            "lf.a2a.v1.A2AService": "agent",
        }
    )
    backends: dict[str, list[str]] = Field(
        default_factory=lambda: {"agent": ["127.0.0.1:50052"], "rag": ["127.0.0.1:50053"]}
    )

    # The HTTP side (services/gateway/http_entry.py): MCP at http://host:http_port/mcp; 0 turns it off.
    http_port: int = Field(default=0, ge=0, le=65535)
    # Where clients reach that side (behind an edge: the edge's https://host:port); it names the MCP
    # resource in the OAuth protected resource metadata (RFC 9728). Empty: http://host:http_port.
    http_public_url: AnyHttpUrl | None = None
    # The methods offered as MCP tools, generated from the descriptor set (unary, routed methods).
    mcp_tools: list[str] = Field(
        default_factory=lambda: [
            "/agentmesh.rag.v1.RagService/Search",
            "/agentmesh.rag.v1.RagService/GetDocument",
            "/agentmesh.agent.v1.AgentService/CreateRun",
            "/agentmesh.agent.v1.AgentService/GetRun",
        ]
    )

    # Token buckets per (caller, method); empty means no limits. Example:
    # AGENTMESH_GATEWAY_RATE_LIMITS='{"limits": {"*": {"rate_per_second": 20, "burst": 40}}}'
    rate_limits: RateLimitPolicy = Field(default_factory=RateLimitPolicy)
    # The public A2A Agent Card (services/gateway/agent_card.py): grpc_url must be the address
    # callers reach, this gateway or the mesh edge in front of it.
    a2a: AgentCardSettings = Field(default_factory=AgentCardSettings)
    # Retries and a circuit breaker per backend on the gateway's outgoing calls.
    upstream_resilience: UpstreamResilience = Field(default_factory=UpstreamResilience)

    @model_validator(mode="after")
    def _every_route_has_a_backend(self) -> GatewaySettings:
        missing = sorted({b for b in self.routes.values() if b not in self.backends})
        if missing:
            raise ValueError(f"routes name backends with no endpoints configured: {missing}")
        return self

    @model_validator(mode="after")
    def _http_entry_reaches_the_grpc_port(self) -> GatewaySettings:
        # The HTTP side calls the gRPC port over loopback in plaintext; with TLS there it would need
        # a client certificate of its own. Behind a mesh, the sidecar terminates TLS instead.
        if self.http_port and self.tls is not None:
            raise ValueError(
                "http_port needs the gRPC port in plaintext (tls unset): the HTTP side calls it over loopback"
            )
        if self.http_port and self.http_port == self.port:
            raise ValueError("http_port must differ from port")
        if self.http_public_url is not None and self.http_public_url.path not in (None, "", "/"):
            raise ValueError("http_public_url is scheme://host:port, without a path (the HTTP side serves /mcp there)")
        return self

    @property
    def http_origin(self) -> str:
        """Where clients reach the HTTP side, without a trailing slash."""
        if self.http_public_url is not None:
            return str(self.http_public_url).rstrip("/")
        return f"http://{self.host}:{self.http_port}"
