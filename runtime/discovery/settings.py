"""Discovery settings: static (the embedded default) or Consul, chosen by ``AGENTMESH_DISCOVERY``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DiscoverySettings(BaseSettings):
    """``AGENTMESH_DISCOVERY=consul`` switches from the static table to Consul.

    Static endpoints come from each service's own settings (``AGENTMESH_GATEWAY_BACKENDS``, ...),
    or, for every service at once, from a JSON file named by ``AGENTMESH_STATIC_TARGETS_FILE``
    (``{"rag": ["127.0.0.1:50053"], ...}``). The Consul address and token fall back to
    Consul's own ``CONSUL_HTTP_ADDR`` / ``CONSUL_HTTP_TOKEN``, so the usual Consul environment works.
    """

    model_config = SettingsConfigDict(env_prefix="AGENTMESH_", env_file=".env", extra="ignore", populate_by_name=True)

    discovery: Literal["static", "consul"] = "static"
    static_targets_file: Path | None = None

    consul_http_addr: str = Field(
        default="127.0.0.1:8500",
        validation_alias=AliasChoices("AGENTMESH_CONSUL_HTTP_ADDR", "CONSUL_HTTP_ADDR"),
    )
    consul_http_token: str | None = Field(
        default=None, validation_alias=AliasChoices("AGENTMESH_CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN")
    )
    # gRPC client-side health checking of each instance (grpc.health.v1 Watch). Off behind a
    # sidecar: the app then sees one address, its sidecar, which health-checks the instances itself.
    client_health_checks: bool = True
    # Only instances carrying this tag are used (e.g. "v2" for a canary client); None = all versions.
    consul_tag: str | None = None

    # How this instance registers itself (Consul mode only).
    advertise_address: str = "127.0.0.1"
    service_version: str = "v1"
    check_interval_seconds: float = Field(default=5.0, gt=0)
    check_timeout_seconds: float = Field(default=2.0, gt=0)
    deregister_critical_after_seconds: float = Field(default=60.0, gt=0)
