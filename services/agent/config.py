"""Settings of the agent service (env prefix `AGENTMESH_AGENT_`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from runtime.a2a_card import AgentCardSettings
from runtime.config import ModelServiceSettings
from runtime.database import database_url_field
from runtime.resilience import UpstreamResilience
from services.agent.a2a_push_policy import PushSettings

# Connections a replica needs besides its workers' (one each): RPC handlers (CreateRun's
# transaction, GetRun's read), the read model's follower, the outbox relay and the sweeps.
# Measured with 16 workers, pools of 20-24 settled the most runs (docs/benchmarks.md).
POOL_HEADROOM = 4


class FallbackRuleSetting(BaseModel):
    """When the decision step fails, a question matching `pattern` (a regex) gets `answer`."""

    pattern: str
    answer: str

    @field_validator("pattern")
    @classmethod
    def _a_regex(cls, pattern: str) -> str:
        # Checked now: a bad pattern would otherwise surface only when a decision fails.
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"pattern {pattern!r} is not a regular expression: {error}") from None
        return pattern


class AgentSettings(ModelServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTMESH_AGENT_", env_file=".env", extra="ignore", frozen=True)

    port: int = Field(default=50052, ge=0, le=65535)
    # Where the RAG service is (static discovery, the embedded default).
    rag_endpoints: list[str] = Field(default_factory=lambda: ["127.0.0.1:50053"])
    retrieval_top_k: int = Field(default=3, ge=1, le=50)
    retrieval_timeout_s: float = Field(default=2.0, gt=0)

    # What this replica does with runs. "all": serves every RPC and executes the runs it admits
    # (one process does everything). "serve": serves every RPC and inserts admitted runs, executes
    # none and loads no decision model: its event loop only answers calls. "execute": serves too,
    # and its workers claim unstarted runs from the shared database (any replica's), woken by
    # each admission. A "serve" replica needs at least one "execute" replica on its database.
    role: Literal["all", "serve", "execute"] = "all"
    # Background execution: runs in flight at once, and admitted runs waiting for a worker (with
    # role "all" this replica's own queue; otherwise the runs no executor has begun yet, counted
    # in the shared database).
    workers: int = Field(default=8, ge=1)
    backlog: int = Field(default=256, ge=0)
    # Role "execute": how often to look for unstarted runs when no admission woke it (commits are
    # announced by NOTIFY on PostgreSQL; on SQLite shared by processes this poll is the wake-up).
    claim_poll_s: float = Field(default=0.25, gt=0)
    # The RetryInfo hint sent with RESOURCE_EXHAUSTED when workers and backlog are full.
    busy_retry_after_s: float = Field(default=1.0, ge=0)

    # Decision step: a registered engine ("extractive", "http") or "package.module:factory",
    # called with `decision_engine_options` as keyword arguments.
    decision_engine: str = "extractive"
    decision_engine_options: dict[str, Any] = Field(default_factory=dict)
    decision_timeout_s: float = Field(default=10.0, gt=0)
    fallback_rules: list[FallbackRuleSetting] = Field(default_factory=list)

    # Review rules.
    review_min_confidence: float = Field(default=0.25, ge=0, le=1)
    review_sensitive_terms: list[str] = Field(default_factory=lambda: ["password", "credential", "salary", "medical"])
    # Who may review is the auth policy's business: SubmitReview requires `runs.review`
    # (runtime/security.py, MESH_REQUIRED_SCOPES) whenever `auth` is configured.

    # Tool budget: tool calls one run reserves, and the most a caller's in-flight runs may hold.
    tool_calls_per_run: int = Field(default=2, ge=1)
    tool_budget_per_caller: int = Field(default=2000, ge=1)

    # Event bus: in-process (embedded default) or Redis Streams.
    event_bus: Literal["in_process", "redis"] = "in_process"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # This replica's name: saga lease owner, the read model's lease and Redis consumer name.
    # Empty: host name plus a random suffix, kept in the data dir (runtime/instance.py), unique
    # per live process (events a dead consumer had read are claimed by the live ones after
    # `claim_idle`, so a new name loses nothing).
    instance_id: str = ""
    outbox_poll_s: float = Field(default=1.0, gt=0)
    # A run's saga is leased to the instance executing it; each step renews the lease, so it must
    # outlast the longest step. Another instance resumes the run only after it expires.
    saga_lease_s: float = Field(default=120.0, gt=0)
    # How long consumers remember applied event ids (redeliveries come within minutes).
    dedup_retention_s: float = Field(default=24 * 3600, gt=0)

    # The shared database: postgresql://user@host:port/dbname. Empty: SQLite files in data_dir.
    database_url: str = ""
    # The read model's database; empty: the same as database_url (one database, one pool).
    read_database_url: str = ""
    # Connections in each database's pool, the most this replica opens to it; unset: one per
    # worker and POOL_HEADROOM more (docs/database.md, "Connections").
    database_pool_size: int | None = Field(default=None, ge=1, le=200)
    # On PostgreSQL, connections of a pool of their own for callers' reads of one run (GetRun, A2A
    # GetTask), which run executions and CreateRun's transactions never hold: such a read does not
    # queue behind them for a connection. 0: those reads share the pool above.
    database_query_pool_size: int = Field(default=2, ge=0, le=50)
    _service_database_urls = field_validator("database_url", "read_database_url")(database_url_field)

    @model_validator(mode="after")
    def _lease_outlasts_a_step(self) -> AgentSettings:
        longest_step = max(self.decision_timeout_s, self.retrieval_timeout_s)
        if self.saga_lease_s <= longest_step:
            raise ValueError(
                f"saga_lease_s ({self.saga_lease_s}) must exceed the longest step timeout ({longest_step}),"
                " or a slow step would lose its run to another instance"
            )
        return self

    @property
    def database_connections(self) -> int:
        """The pool size: ``database_pool_size``, else a connection per worker and the headroom."""
        return self.database_pool_size or self.workers + POOL_HEADROOM

    @property
    def write_db_path(self) -> Path:
        """Runs, their event log, the outbox, the saga log and the tool budget (one transaction scope)."""
        return self.data_dir / "agent.sqlite3"

    @property
    def read_db_path(self) -> Path:
        """The run projection, built only from events."""
        return self.data_dir / "agent-read.sqlite3"

    # Calls with side effects take idempotency keys; CreateRun's AIP-155 request_id is one too.
    idempotent_methods: dict[str, str] = Field(
        default_factory=lambda: {
            "/agentmesh.agent.v1.AgentService/CreateRun": "request_id",
            "/agentmesh.agent.v1.AgentService/CancelRun": "",
            "/agentmesh.agent.v1.AgentService/SubmitReview": "",
            "/lf.a2a.v1.A2AService/CancelTask": "",
        }
    )
    # The A2A Agent Card (GetExtendedAgentCard; the public card is the gateway's, same settings).
    a2a: AgentCardSettings = Field(default_factory=AgentCardSettings)
    # Where A2A push notifications may go, and how their deliveries are retried.
    a2a_push: PushSettings = Field(default_factory=PushSettings)
    # Retries and a circuit breaker on the calls to RAG.
    upstream_resilience: UpstreamResilience = Field(default_factory=UpstreamResilience)
    # The agent's own bearer token (a file, re-read when replaced), used for calls to RAG made on
    # no caller's behalf: runs resumed after a restart. Needs the `documents.read` scope.
    service_token_file: Path | None = None
