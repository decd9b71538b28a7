"""Who may call a service, from its settings: the auth interceptor and the mesh's scope table.

Every service (gateway and backends alike) verifies the caller's token itself against
the same table, so a token works through the gateway and directly against a backend,
and a hop can never widen what the caller may do. ``AGENTMESH_<SERVICE>_AUTH`` holds the
settings as JSON, e.g. ``{"jwks_file": "var/keys/jwks.json"}``; keys and tokens for
local runs come from ``python -m tools.dev_tokens``.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from interceptors.auth import DEFAULT_PUBLIC_METHODS, AuthInterceptor, AuthPolicy
from interceptors.jwks import JwksFile, KeySet, KeySource, TokenVerifier
from interceptors.selector import validate_pattern

log = structlog.get_logger(__name__)

DEFAULT_ISSUER = "https://auth.agentmesh.local"
DEFAULT_AUDIENCE = "agentmesh"

_AGENT = "/agentmesh.agent.v1.AgentService"
_RAG = "/agentmesh.rag.v1.RagService"
_A2A = "/lf.a2a.v1.A2AService"

# The one table of who may call what. The agent searches RAG with the caller's own
# token, so creating a run that uses the knowledge base needs documents.read as well.
MESH_REQUIRED_SCOPES: dict[str, list[str]] = {
    f"{_AGENT}/CreateRun": ["runs.write"],
    f"{_AGENT}/CancelRun": ["runs.write"],
    f"{_AGENT}/SubmitReview": ["runs.review"],
    f"{_AGENT}/GetRun": ["runs.read"],
    f"{_AGENT}/ListRuns": ["runs.read"],
    f"{_AGENT}/WatchRun": ["runs.read"],
    f"{_AGENT}/GetRunStats": ["runs.read"],
    # A2A tasks are runs: the same scopes as the AgentService methods doing the same thing (a
    # reply approving or rejecting a task also needs runs.review, checked by the agent).
    f"{_A2A}/SendMessage": ["runs.write"],
    f"{_A2A}/SendStreamingMessage": ["runs.write"],
    f"{_A2A}/CancelTask": ["runs.write"],
    f"{_A2A}/GetTask": ["runs.read"],
    f"{_A2A}/ListTasks": ["runs.read"],
    f"{_A2A}/SubscribeToTask": ["runs.read"],
    f"{_A2A}/CreateTaskPushNotificationConfig": ["runs.write"],
    f"{_A2A}/DeleteTaskPushNotificationConfig": ["runs.write"],
    f"{_A2A}/GetTaskPushNotificationConfig": ["runs.read"],
    f"{_A2A}/ListTaskPushNotificationConfigs": ["runs.read"],
    f"{_A2A}/GetExtendedAgentCard": ["runs.read"],
    f"{_RAG}/IngestDocuments": ["documents.write"],
    f"{_RAG}/StreamIngestDocuments": ["documents.write"],
    f"{_RAG}/DeleteDocument": ["documents.write"],
    f"{_RAG}/Search": ["documents.read"],
    f"{_RAG}/GetDocument": ["documents.read"],
}


class AuthSettings(BaseModel):
    """Token verification and the per-method policy of one service."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # RS256/ES256 public keys. Production uses this.
    jwks_file: Path | None = None
    # Re-read the JWKS at most this often when a token names an unknown key (rotation).
    jwks_reload_interval_s: float = Field(default=30.0, ge=0)
    # HS256 shared secret, for local development only (anyone holding it can mint tokens).
    dev_hs256_secret: SecretStr | None = None
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    leeway_s: float = Field(default=10.0, ge=0, le=300)
    required_scopes: dict[str, list[str]] = Field(default_factory=lambda: dict(MESH_REQUIRED_SCOPES))
    public_methods: list[str] = Field(default_factory=lambda: list(DEFAULT_PUBLIC_METHODS))
    # Requires the server to run with TLS client certificates (mTLS).
    mtls: bool = False
    required_peers: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("required_scopes", "required_peers")
    @classmethod
    def _patterns(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for pattern in value:
            validate_pattern(pattern)
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> AuthSettings:
        if (self.jwks_file is None) == (self.dev_hs256_secret is None):
            raise ValueError("auth needs exactly one key source: jwks_file, or dev_hs256_secret for local runs")
        return self

    def policy(self) -> AuthPolicy:
        return AuthPolicy(
            required_scopes=self.required_scopes,
            public_methods=self.public_methods,
            required_peers=self.required_peers,
        )

    def keys(self) -> KeySource:
        if self.jwks_file is not None:
            return JwksFile(self.jwks_file, min_reload_interval_s=self.jwks_reload_interval_s)
        assert self.dev_hs256_secret is not None  # one of the two, checked above
        return KeySet.hs256_dev(self.dev_hs256_secret.get_secret_value())


def auth_interceptor(settings: AuthSettings | None, *, service: str) -> AuthInterceptor | None:
    """The service's auth interceptor, or None (logged loudly) when auth is not configured."""
    if settings is None:
        log.warning(
            "auth is off: calls are not authenticated; configure it for anything but a local run",
            service=service,
            setting=f"AGENTMESH_{service.upper()}_AUTH",
        )
        return None
    if settings.dev_hs256_secret is not None:
        log.warning("auth accepts HS256 dev tokens; never use the dev secret outside local runs", service=service)
    return AuthInterceptor(verifier=token_verifier(settings), policy=settings.policy(), mtls=settings.mtls)


def token_verifier(settings: AuthSettings) -> TokenVerifier:
    """What checks a bearer token under these settings (keys, issuer, audience, leeway)."""
    return TokenVerifier(
        keys=settings.keys(), issuer=settings.issuer, audience=settings.audience, leeway_seconds=settings.leeway_s
    )
