"""Live config drives the interceptors that enforce it: rate limits and circuit breakers.

`runtime/live_config.py` validates a Consul KV change and swaps in new `DynamicSettings`; this
module is the subscriber that carries such a change into the running chain, so it applies from
the next call on, without a restart:

* `rate_limit` (requests_per_second, burst) becomes the token bucket of every caller on every
  method, replacing the service's configured rate-limit policy;
* `breaker` (failure_threshold, reset_timeout_seconds, half_open_max_calls) sets the consecutive
  failures that open a breaker, how long it stays open, and the half-open probes, on top of the
  service's configured breaker policy (its failure codes and failure-rate window stay).

* `route_weights` splits each backend's calls between its versions (Consul version tags),
  see `runtime/discovery/version_split.py`.

Only a section that actually changed is applied, so an unrelated change (a feature flag) never
resets buckets or breaker windows.
"""

from __future__ import annotations

import structlog

from interceptors.circuit_breaker import BreakerPolicy, BreakerSet
from interceptors.rate_limit import Limit, RateLimitInterceptor, RateLimitPolicy
from runtime.discovery.upstreams import DiscoveryUpstreams
from runtime.dynamic_settings import Breaker, DynamicSettings, RateLimit
from runtime.live_config import LiveConfig

log = structlog.get_logger(__name__)


def rate_limit_policy(live: RateLimit) -> RateLimitPolicy:
    return RateLimitPolicy(limits={"*": Limit(rate_per_second=live.requests_per_second, burst=live.burst)})


def breaker_policy(base: BreakerPolicy, live: Breaker) -> BreakerPolicy:
    return base.model_copy(
        update={
            "consecutive_failures": live.failure_threshold,
            "open_seconds": live.reset_timeout_seconds,
            "half_open_probes": live.half_open_max_calls,
        }
    )


async def follow_live_config(
    live_config: LiveConfig[DynamicSettings],
    *,
    rate_limit: RateLimitInterceptor | None = None,
    breakers: BreakerSet | None = None,
    upstreams: DiscoveryUpstreams | None = None,
) -> None:
    """Subscribe the given enforcers to `live_config` (and apply the route weights it starts with)."""
    if upstreams is not None and live_config.current.route_weights:
        await upstreams.set_route_weights(live_config.current.route_weights)

    async def apply(old: DynamicSettings, new: DynamicSettings) -> None:
        if rate_limit is not None and new.rate_limit != old.rate_limit:
            rate_limit.replace_policy(rate_limit_policy(new.rate_limit))
            log.info("live_config.enforced", setting="rate_limit", value=new.rate_limit.model_dump())
        if breakers is not None and new.breaker != old.breaker:
            breakers.reconfigure(breaker_policy(breakers.policy, new.breaker))
            log.info("live_config.enforced", setting="breaker", value=new.breaker.model_dump())
        if upstreams is not None and new.route_weights != old.route_weights:
            await upstreams.set_route_weights(new.route_weights)
            log.info("live_config.enforced", setting="route_weights", value=new.route_weights)

    live_config.subscribe(apply)
