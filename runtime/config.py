"""Typed settings shared by every service, read from the environment and `.env`.

Each service has its own prefix under one family (`AGENTMESH_GATEWAY_`, `AGENTMESH_AGENT_`,
`AGENTMESH_RAG_`), so one `.env` can configure the whole system on one machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.database.urls import database_url_field
from runtime.security import AuthSettings
from runtime.settings_errors import reject_empty_path


class TlsSettings(BaseModel):
    """Serve TLS; with `client_ca_file`, mutual TLS (callers must present a certificate from that CA)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class ServiceSettings(BaseSettings):
    """What every grpc.aio server in agentmesh needs to start and to stop well."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # `AGENTMESH_RAG_DATA_DIR=` would otherwise mean the current directory, silently.
    _no_empty_paths = field_validator("*", mode="before")(reject_empty_path)
    _database_urls = field_validator("idempotency_database_url")(database_url_field)

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    # Serve the port from this many processes (SO_REUSEPORT), one core each: runtime/processes.py.
    processes: int = Field(default=1, ge=1, le=64)
    # After SIGTERM: health reports NOT_SERVING and new calls are refused for `drain_delay_s`
    # (so balancers and health checkers notice), then in-flight calls get `grace_period_s`.
    drain_delay_s: float = Field(default=0.5, ge=0)
    grace_period_s: float = Field(default=10.0, ge=0)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    # TLS on the listening port (e.g. `{"cert_file": ..., "key_file": ..., "client_ca_file": ...}`);
    # None serves plaintext, as behind a mesh sidecar that terminates mTLS.
    tls: TlsSettings | None = None
    # Bearer-token auth (runtime/security.py). None runs without it, with a warning at start.
    auth: AuthSettings | None = None
    data_dir: Path = Path("var")
    # Written with the bound port once the server listens, so launchers and tests can find it.
    port_file: Path | None = None

    # The interceptor chain (interceptors/chain.py). Calls that arrive without a deadline get
    # this one; outgoing calls get the caller's remaining budget less the margin.
    default_deadline_s: float = Field(default=30.0, gt=0)
    deadline_margin_s: float = Field(default=0.05, ge=0)
    # One access-log line in this many of successful calls, per method (failed calls: always).
    access_log_ok_every: int = Field(default=1, ge=1)
    # Prometheus metrics on http://metrics_host:metrics_port/metrics; 0 turns the endpoint off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # Traces: exported over OTLP/gRPC only when an endpoint is set; trace ids are logged always.
    otlp_endpoint: str | None = None
    trace_sample_ratio: float = Field(default=1.0, ge=0, le=1)
    # Idempotency keys: which methods take them (full method name -> request field that also
    # carries the key, "" for the `idempotency-key` header only) and where they are kept.
    idempotent_methods: dict[str, str] = Field(default_factory=dict)
    # "postgres" shares the keys between replicas like "redis" (idempotency_database_url, or
    # the service's own database_url when it has one; a service with a database_url defaults to it).
    idempotency_store: Literal["sqlite", "redis", "memory", "postgres"] = "sqlite"
    idempotency_database_url: str = ""
    idempotency_redis_url: str = "redis://127.0.0.1:6379/0"
    idempotency_ttl_s: float = Field(default=24 * 3600.0, gt=0)


class ModelServiceSettings(ServiceSettings):
    """A service that may run the sentence model (the agent's decisions, RAG's dense retrieval)."""

    # Where the model's exported ONNX graph is kept (runtime/minilm_graph.py); unset: the `models`
    # folder of `data_dir`. Replicas on one host may share one directory, and only the first to
    # start exports (seconds of CPU): files are named by the digest of the model and of their own
    # bytes and written by atomic rename, so a replica never opens a partial or damaged one.
    model_cache_dir: Path | None = None

    @field_validator("model_cache_dir")
    @classmethod
    def _a_directory(cls, path: Path | None) -> Path | None:
        # Checked now: a file there would otherwise surface only when the model loads, in the background.
        if path is not None and path.exists() and not path.is_dir():
            raise ValueError("names something that is not a directory")
        return path

    @property
    def model_cache(self) -> Path:
        """The directory the model's exported graph is kept in."""
        return self.model_cache_dir or self.data_dir / "models"
