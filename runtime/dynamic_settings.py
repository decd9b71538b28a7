"""The settings that may change while a service runs (env/.env defaults, Consul KV overrides)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RateLimit(_Frozen):
    """Token bucket per caller: ``requests_per_second`` refill, up to ``burst`` at once."""

    requests_per_second: float = Field(default=50.0, gt=0)
    burst: int = Field(default=100, ge=1)


class Breaker(_Frozen):
    """Circuit breaker per target: open after ``failure_threshold`` consecutive failures."""

    failure_threshold: int = Field(default=5, ge=1)
    reset_timeout_seconds: float = Field(default=10.0, gt=0)
    half_open_max_calls: int = Field(default=1, ge=1)


class DynamicSettings(BaseSettings):
    """Set by env (``AGENTMESH_BREAKER__FAILURE_THRESHOLD=3``), ``.env``, or at runtime by KV
    (``agentmesh/<service>/breaker/failure_threshold``)."""

    # extra="ignore": one .env configures every service, so it holds AGENTMESH_* keys that are not
    # dynamic settings. KV keys are checked strictly by LiveConfig instead.
    model_config = SettingsConfigDict(
        env_prefix="AGENTMESH_", env_nested_delimiter="__", env_file=".env", extra="ignore", frozen=True
    )

    rate_limit: RateLimit = RateLimit()
    breaker: Breaker = Breaker()
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
