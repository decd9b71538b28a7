"""Live configuration: typed settings from env/.env, overridden at runtime from Consul KV.

Keys under ``agentmesh/<service>/`` map onto the settings model by path: the key
``agentmesh/gateway/breaker/consecutive_failures`` with value ``5`` sets ``breaker.consecutive_failures``;
a value is read as JSON when it parses (``5``, ``true``, ``{"v1": 90}``), as a plain string otherwise.
Every change is validated as a whole before it is applied, atomically; an invalid one is refused
and logged and the last good settings stay. Deleting a key falls back to the env/.env value.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from runtime.backoff import Backoff
from runtime.discovery.consul_client import CONSUL_ERRORS, ConsulAddress, open_consul
from runtime.discovery.factory import consul_address
from runtime.discovery.settings import DiscoverySettings
from runtime.live_config.settings import DynamicSettings
from runtime.supervisor import Outage, SupervisedLoop

if TYPE_CHECKING:
    from runtime.bootstrap import ServerPlan

log = structlog.get_logger(__name__)

SettingsT = TypeVar("SettingsT", bound=BaseModel)
Subscriber = Callable[[SettingsT, SettingsT], Awaitable[None] | None]


def kv_prefix(service: str) -> str:
    return f"agentmesh/{service}/"


def overrides_from_kv(prefix: str, entries: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Nest ``prefix + a/b/c = value`` entries into ``{"a": {"b": {"c": value}}}``."""
    tree: dict[str, Any] = {}
    for entry in entries:
        path = [p for p in entry["Key"].removeprefix(prefix).split("/") if p]
        raw = entry.get("Value")
        if not path or raw is None:
            continue  # "folders" and empty values carry no setting
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


class LiveConfig(Generic[SettingsT]):
    """The current settings for one service, kept in step with ``agentmesh/<service>/`` in Consul KV."""

    def __init__(
        self,
        base: SettingsT,
        *,
        service: str,
        consul: ConsulAddress | None,
        wait: str = "55s",
        cache_path: Path | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self._base = base
        self._current = base
        self._service = service
        self._prefix = kv_prefix(service)
        self._address = consul
        self._wait = wait
        self._cache_path = cache_path
        self._backoff = backoff or Backoff(initial=0.5, maximum=30.0)
        self._subscribers: list[Subscriber[SettingsT]] = []
        self._watch: SupervisedLoop | None = None
        self._client: Any = None
        self._index = 0  # Consul's index of the last answer: the next query blocks until it moves
        self._unreachable = False
        self._last_overrides: dict[str, Any] | None = None
        self.synced = asyncio.Event()  # set once KV (or the cached copy) has been applied

    @property
    def current(self) -> SettingsT:
        return self._current

    def subscribe(self, callback: Subscriber[SettingsT]) -> None:
        """``callback(old, new)`` after each applied change (sync or async)."""
        self._subscribers.append(callback)

    def attach(self, plan: ServerPlan) -> None:
        """Watch while the server runs: from start-up (after it listens) until it has stopped."""

        async def start(port: int) -> None:
            await self.start()
            plan.lifespan.on_close(self.aclose, name=f"live config {self._service}")

        plan.lifespan.on_started(start)

    async def start(self) -> None:
        """Begin watching (no-op without Consul); returns at once, Consul up or not."""
        if self._address is None or self._watch is not None:
            return
        self._client = open_consul(self._address)
        self._watch = SupervisedLoop(
            f"live config {self._service}",
            self._follow_kv,
            backoff=self._backoff,
            outage=Outage(CONSUL_ERRORS, "live_config.consul_unreachable", self._consul_unreachable),
        ).start()

    async def aclose(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _follow_kv(self) -> None:
        """Blocking queries on the prefix, applying each change (supervised: restarted after an outage)."""
        assert self._watch is not None
        while True:
            new_index, entries = await self._client.kv.get(
                self._prefix, recurse=True, index=self._index or None, wait=self._wait
            )
            self._watch.mark_healthy()
            self._unreachable = False
            new_index = int(new_index)
            self._index = 0 if new_index < self._index else max(new_index, 1)
            overrides = overrides_from_kv(self._prefix, list(entries or ()))
            if overrides != self._last_overrides:
                await self.apply(overrides, source="consul")
            self.synced.set()

    async def _consul_unreachable(self, _error: Exception) -> dict[str, Any]:
        if not self._unreachable:
            await self._fall_back_to_cache()
        self._unreachable = True
        return {
            "service": self._service,
            "consul": str(self._address),
            "using": "last applied settings" if self._last_overrides is not None else "env/.env settings",
        }

    async def _fall_back_to_cache(self) -> None:
        if self._last_overrides is not None or self._cache_path is None or not self._cache_path.exists():
            return
        cached = json.loads(self._cache_path.read_text(encoding="utf-8"))
        await self.apply(cached, source=f"cache {self._cache_path}")
        self.synced.set()

    async def apply(self, overrides: Mapping[str, Any], *, source: str) -> bool:
        """Validate ``base + overrides`` and swap it in; False (and the old settings kept) if invalid."""
        model = type(self._base)
        problems = [
            {"key": self._prefix + name, "error": f"not a setting (known: {', '.join(model.model_fields)})"}
            for name in overrides
            if name not in model.model_fields
        ]
        candidate: SettingsT | None = None
        if not problems:
            try:
                # exclude_unset: a policy section keeps only the fields actually given (settings.py).
                candidate = model.model_validate(_merge(self._base.model_dump(exclude_unset=True), overrides))
            except ValidationError as error:
                problems = [
                    {"key": self._prefix + "/".join(str(p) for p in e["loc"]), "error": e["msg"]}
                    for e in error.errors()
                ]
        if candidate is None:
            log.error(
                "live_config.refused",
                service=self._service,
                source=source,
                problems=problems,
                keeping="last good settings",
            )
            self._last_overrides = dict(overrides)  # refused once is enough; wait for the next change
            return False
        old, self._current = self._current, candidate
        self._last_overrides = dict(overrides)
        before, after = _flatten(old.model_dump(exclude_unset=True)), _flatten(candidate.model_dump(exclude_unset=True))
        for path in sorted(before.keys() | after.keys()):
            if before.get(path) != after.get(path):
                log.info(
                    "live_config.changed",
                    service=self._service,
                    setting=path,
                    old=before.get(path),
                    new=after.get(path),
                    source=source,
                )
        if self._cache_path is not None and source == "consul":
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            self._cache_path.write_text(json.dumps(overrides), encoding="utf-8")
        if old != candidate:
            await self._notify(old, candidate)
        return True

    async def _notify(self, old: SettingsT, new: SettingsT) -> None:
        for callback in self._subscribers:
            try:
                result = callback(old, new)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # One broken subscriber must not keep the others on stale settings.
                log.exception("live_config.subscriber_failed", service=self._service, subscriber=repr(callback))


def live_config_for(
    discovery: DiscoverySettings, dynamic: DynamicSettings, *, service: str, data_dir: Path
) -> LiveConfig[DynamicSettings]:
    """``service``'s dynamic settings: ``dynamic`` (env/.env, loaded once at start), overridden
    from Consul KV when discovery is Consul.

    The last applied KV overrides are kept in ``data_dir`` so a restart while Consul is down
    comes back with them rather than with the env defaults.
    """
    consul = consul_address(discovery) if discovery.discovery == "consul" else None
    return LiveConfig(dynamic, service=service, consul=consul, cache_path=data_dir / f"{service}-live-config.json")
