"""Live config drives the interceptors that enforce it: rate limits and circuit breakers.

`kv.py` validates a Consul KV change and swaps in new `DynamicSettings`; this module is the
subscriber that carries such a change into the running chain, so it applies from the next call
on, without a restart:

* `rate_limit` (a `Limit`: rate_per_second, burst) becomes the token bucket of every caller on
  every method, replacing the service's configured rate-limit policy; unset, that policy is back;
* `breaker` (`BreakerPolicy` fields, e.g. consecutive_failures, open_seconds, half_open_probes)
  is laid over the service's configured breaker policy: only the fields given change, so its
  failure codes and failure-rate window stay unless named; unset, the configured policy is back.

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
from runtime.live_config.kv import LiveConfig
from runtime.live_config.settings import DynamicSettings

log = structlog.get_logger(__name__)


def rate_limit_policy(base: RateLimitPolicy, live: Limit | None) -> RateLimitPolicy:
    return base if live is None else RateLimitPolicy(limits={"*": live})


def breaker_policy(base: BreakerPolicy, live: BreakerPolicy | None) -> BreakerPolicy:
    if live is None:
        return base
    return base.model_copy(update={name: getattr(live, name) for name in live.model_fields_set})


async def follow_live_config(
    live_config: LiveConfig[DynamicSettings],
    *,
    rate_limit: RateLimitInterceptor | None = None,
    breakers: BreakerSet | None = None,
    upstreams: DiscoveryUpstreams | None = None,
) -> None:
    """Subscribe the given enforcers to `live_config` (and apply the route weights it starts with)."""
    # The configured policies, which an unset live setting falls back to.
    base_limits = rate_limit.policy if rate_limit is not None else None
    base_breaker = breakers.policy if breakers is not None else None
    if upstreams is not None and live_config.current.route_weights:
        await upstreams.set_route_weights(live_config.current.route_weights)

    def shown(live: Limit | BreakerPolicy | None) -> object:
        return None if live is None else live.model_dump(exclude_unset=True)

    async def apply(old: DynamicSettings, new: DynamicSettings) -> None:
        if rate_limit is not None and base_limits is not None and new.rate_limit != old.rate_limit:
            rate_limit.replace_policy(rate_limit_policy(base_limits, new.rate_limit))
            log.info("live_config.enforced", setting="rate_limit", value=shown(new.rate_limit))
        if breakers is not None and base_breaker is not None and new.breaker != old.breaker:
            breakers.reconfigure(breaker_policy(base_breaker, new.breaker))
            log.info("live_config.enforced", setting="breaker", value=shown(new.breaker))
        if upstreams is not None and new.route_weights != old.route_weights:
            await upstreams.set_route_weights(new.route_weights)
            log.info("live_config.enforced", setting="route_weights", value=new.route_weights)

    live_config.subscribe(apply)
