"""The settings that may change while a service runs (env/.env defaults, Consul KV overrides).

Each live setting reuses the schema of the policy it overrides, so a key is spelled the same
in the service's static configuration, in the environment and in KV:
``rate_limit`` is an ``interceptors.rate_limit.Limit``, ``breaker`` a
``interceptors.circuit_breaker.BreakerPolicy`` of which only the fields given are applied.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from interceptors.circuit_breaker import BreakerPolicy
from interceptors.rate_limit import Limit


class DynamicSettings(BaseSettings):
    """Set by env (``AGENTMESH_BREAKER__CONSECUTIVE_FAILURES=3``), ``.env``, or at runtime by KV
    (``agentmesh/<service>/breaker/consecutive_failures``)."""

    # extra="ignore": one .env configures every service, so it holds AGENTMESH_* keys that are not
    # dynamic settings. KV keys are checked strictly by LiveConfig instead.
    model_config = SettingsConfigDict(
        env_prefix="AGENTMESH_", env_nested_delimiter="__", env_file=".env", extra="ignore", frozen=True
    )

    # One token bucket for every caller on every method, replacing the service's rate-limit
    # policy while set; None: the service's own policy.
    rate_limit: Limit | None = None
    # Fields laid over the service's breaker policy (only those given: its failure codes and
    # window stay unless named); None: the service's own policy.
    breaker: BreakerPolicy | None = None
    # Share of each backend's calls per version tag of its instances (e.g. {"v1": 90, "v2": 10});
    # empty: no split, every passing instance (runtime/discovery/version_split.py).
    route_weights: dict[str, int] = Field(default_factory=dict)
    feature_flags: dict[str, bool] = Field(default_factory=dict)

    @field_validator("route_weights")
    @classmethod
    def _weights_route_somewhere(cls, weights: dict[str, int]) -> dict[str, int]:
        if weights and (any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0):
            raise ValueError("route weights must be >= 0 and add up to more than 0 (or be empty: no split)")
        return weights
