"""One refresh loop for every open page: discovery, PromQL and the trace ring, every few seconds.

However many browsers are open, Prometheus and discovery are asked once per refresh; pages
read the latest snapshot. A failure of either source is part of the snapshot ("Prometheus is
down: ..."), and the rest of it is still filled in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from console import topology
from console.envoy_hosts import Ejection, EnvoyHosts
from console.inventory import Inventory, InventoryUnavailable
from console.prometheus import GoldenSignals, PrometheusUnavailable, Signals
from console.trace_store import TraceStore
from runtime.backoff import Backoff
from runtime.supervisor import SupervisedLoop

log = structlog.get_logger(__name__)


class LiveView:
    def __init__(
        self,
        *,
        inventory: Inventory,
        envoy: EnvoyHosts,
        signals: GoldenSignals,
        traces: TraceStore,
        refresh_s: float,
        edge_window_s: float,
    ) -> None:
        self._inventory = inventory
        self._envoy = envoy
        self._signals = signals
        self._traces = traces
        self.refresh_s = refresh_s
        self._edge_window_s = edge_window_s
        self.snapshot: dict[str, Any] = {"version": 0, "ready": False}
        self._changed = asyncio.Condition()
        self._loop: SupervisedLoop | None = None

    async def refresh(self) -> dict[str, Any]:
        problems: dict[str, str] = {}
        instances = []
        try:
            instances = await self._inventory.instances()
        except InventoryUnavailable as error:
            problems["discovery"] = str(error)
        ejections: dict[str, list[Ejection]] | None = None
        if self._envoy.configured:
            ejections, unanswered = await self._envoy.read()
            if unanswered:
                problems["envoy"] = "; ".join(unanswered)
        signals: Signals | None = None
        try:
            signals = await self._signals.read()
        except PrometheusUnavailable as error:
            problems["prometheus"] = str(error)
        observed = topology.observe_calls(self._traces.spans(), window_s=self._edge_window_s)
        snapshot = {
            "version": int(self.snapshot["version"]) + 1,
            "ready": True,
            "at": time.time(),
            "problems": problems,
            "topology": topology.build(instances, signals, observed, ejections),
            "signals": signals.to_json() if signals else None,
            "prometheus_url": self._signals.promql.url,
            "rate_window": self._signals.window,
            "traces": {"stored": len(self._traces), "capacity": self._traces.max_traces},
        }
        self.snapshot = snapshot
        async with self._changed:
            self._changed.notify_all()
        return snapshot

    async def next_snapshot(self, seen: int, timeout_s: float) -> dict[str, Any]:
        async with self._changed:
            if int(self.snapshot["version"]) == seen:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_s):
                        await self._changed.wait()
        return self.snapshot

    async def _refresh_every_period(self) -> None:
        assert self._loop is not None
        while True:
            await self.refresh()
            self._loop.mark_healthy()
            await asyncio.sleep(self.refresh_s)

    def start(self) -> None:
        # A refresh that fails (a bug: the sources' outages are part of the snapshot) is logged
        # and the next one runs within a period, as after a good one: pages keep being refreshed.
        self._loop = SupervisedLoop(
            "console refresh",
            self._refresh_every_period,
            backoff=Backoff(initial=self.refresh_s, maximum=self.refresh_s),
        ).start()

    async def stop(self) -> None:
        if self._loop is not None:
            await self._loop.stop()
