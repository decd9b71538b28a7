"""The console's settings (``AGENTMESH_CONSOLE_*``, or ``.env``).

Safe by default: it binds to loopback; bound to any other address it refuses to start
without ``AGENTMESH_CONSOLE_TOKEN``, which every request must then carry.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTMESH_CONSOLE_", env_file=".env", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    # Required when `host` is not loopback: requests carry it as a bearer token or `?token=`.
    token: SecretStr | None = None
    # The OTLP/gRPC trace receiver (services' `AGENTMESH_<SVC>_OTLP_ENDPOINT` points here).
    otlp_host: str = "127.0.0.1"
    otlp_port: int = Field(default=4317, ge=0, le=65535)
    # The ring of recent traces: oldest dropped first.
    trace_ring_size: int = Field(default=500, ge=1, le=100_000)
    max_spans_per_trace: int = Field(default=256, ge=1, le=10_000)
    # Spans not kept (by name prefix): health checks, the console's own probes among them, would
    # otherwise fill the ring every few seconds with one-span traces nobody looks at.
    drop_span_prefixes: list[str] = Field(default_factory=lambda: ["/grpc.health.v1.Health/"])
    prometheus_url: str = "http://127.0.0.1:9090"
    # PromQL rate window; a few scrape intervals.
    rate_window: str = Field(default="30s", pattern=r"^[0-9]+[smh]$")
    # Where runs are read: the gateway (or the edge, with `gateway_ca_file` for its TLS).
    gateway: str = "127.0.0.1:50051"
    gateway_ca_file: Path | None = None
    gateway_server_name: str | None = None
    # A token with runs.read only (`make run` writes var/keys/console-token); None without auth.
    gateway_token_file: Path | None = None
    # Static discovery: service -> gRPC targets, and target -> version (default v1).
    # With AGENTMESH_DISCOVERY=consul the services below are looked up in Consul instead.
    targets: dict[str, list[str]] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    services: list[str] = Field(default_factory=lambda: ["gateway", "agent", "rag"])
    # Envoy sidecars whose admin /clusters says which instances they eject (name -> admin URL), and
    # the address each sidecar dials for an instance -> that instance's gRPC address (as in `targets`).
    # `make run MESH=envoy` sets both; empty, the console has no ejection source and says so.
    envoy_admins: dict[str, str] = Field(default_factory=dict)
    envoy_upstreams: dict[str, str] = Field(default_factory=dict)
    # How often the page's live view is refreshed (server-sent events).
    refresh_s: float = Field(default=2.0, gt=0, le=60)
    # Written with the bound ports once listening ({"http": ..., "otlp": ...}), for launchers and tests.
    port_file: Path | None = None

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ConsoleSettings:
        if not is_loopback(self.host) and self.token is None:
            raise ValueError(
                f"AGENTMESH_CONSOLE_HOST={self.host} is not loopback: set AGENTMESH_CONSOLE_TOKEN "
                "(every request must then carry it), or bind to 127.0.0.1"
            )
        return self
