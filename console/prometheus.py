"""Golden signals from Prometheus, asked with PromQL over its HTTP API (``/api/v1/query``).

The console stores no time series: every figure on the page is one instant query over the
metrics the services export (interceptors/metrics.py, go-grpc-prometheus names) with the
labels the scrape config adds (``service``, ``version``, ``grpc``). When Prometheus cannot be
reached the queries raise ``PrometheusUnavailable`` and the page says so.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp


class PrometheusUnavailable(Exception):
    """Prometheus did not answer, or answered with an error."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class PromQL:
    """A small client for instant queries; one HTTP session for the console's lifetime."""

    def __init__(self, url: str, *, timeout_s: float = 3.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def query(self, promql: str) -> list[Sample]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(f"{self.url}/api/v1/query", params={"query": promql}) as response:
                body: dict[str, Any] = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            reason = str(error) or type(error).__name__
            raise PrometheusUnavailable(f"Prometheus at {self.url} did not answer: {reason}") from error
        if body.get("status") != "success":
            raise PrometheusUnavailable(f"Prometheus refused {promql!r}: {body.get('error', body)}")
        samples = []
        for item in body["data"]["result"]:
            value = float(item["value"][1])
            if not math.isnan(value):  # NaN: a quantile over no observations
                samples.append(Sample(labels=dict(item["metric"]), value=value))
        return samples

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass
class MethodSignals:
    service: str
    method: str  # /package.Service/Method
    rate: float = 0.0  # calls/s
    errors: dict[str, float] = field(default_factory=dict)  # non-OK code -> calls/s
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return sum(self.errors.values()) / self.rate if self.rate else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "method": self.method,
            "rate": self.rate,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
        }


@dataclass
class Signals:
    """Everything the page's signal panels and topology take from Prometheus, at one instant."""

    methods: list[MethodSignals]
    # (service, version, grpc address) -> calls/s and errors/s, for nodes and the canary split.
    instances: dict[tuple[str, str, str], tuple[float, float]]
    breakers: list[dict[str, str]]  # {service, target, state}
    scrape_up: dict[str, bool]  # grpc address -> last scrape succeeded

    def canary_split(self) -> dict[str, dict[str, float]]:
        """Per service with more than one version: each version's share of calls (0..1)."""
        by_service: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for (service, version, _), (rate, _) in self.instances.items():
            by_service[service][version] += rate
        split = {}
        for service, versions in by_service.items():
            total = sum(versions.values())
            if len(versions) > 1:
                split[service] = {v: (r / total if total else 0.0) for v, r in sorted(versions.items())}
        return split

    def method_rates(self) -> dict[tuple[str, str], MethodSignals]:
        return {(m.service, m.method): m for m in self.methods}

    def to_json(self) -> dict[str, Any]:
        return {
            "methods": [m.to_json() for m in sorted(self.methods, key=lambda m: (m.service, m.method))],
            "breakers": self.breakers,
            "canary": self.canary_split(),
        }


class GoldenSignals:
    """The PromQL behind the page, over a ``window`` (e.g. "30s": a few scrapes)."""

    def __init__(self, promql: PromQL, *, window: str = "30s") -> None:
        self.promql = promql
        self.window = window

    def queries(self) -> dict[str, str]:
        w = self.window
        by_method = "service, grpc_service, grpc_method"
        # Health checks and reflection (the console's own probes among them) are not the mesh's traffic.
        app = 'grpc_service!~"grpc[.].*"'
        calls = f"rate(grpc_server_handled_total{{{app}}}[{w}])"
        buckets = f"rate(grpc_server_handling_seconds_bucket{{{app}}}[{w}])"
        return {
            "calls": f"sum by ({by_method}, grpc_code) ({calls})",
            "p50": f"histogram_quantile(0.5, sum by ({by_method}, le) ({buckets}))",
            "p99": f"histogram_quantile(0.99, sum by ({by_method}, le) ({buckets}))",
            "instances": f"sum by (service, version, grpc, grpc_code) ({calls})",
            "breakers": "agentmesh_circuit_breaker_state == 1",
            "up": 'up{job="agentmesh"}',
        }

    async def read(self) -> Signals:
        names = list(self.queries())
        results = await asyncio.gather(*(self.promql.query(q) for q in self.queries().values()))
        by_name = dict(zip(names, results, strict=True))
        methods: dict[tuple[str, str], MethodSignals] = {}

        def method(labels: dict[str, str]) -> MethodSignals:
            key = (labels.get("service", ""), f"/{labels.get('grpc_service', '')}/{labels.get('grpc_method', '')}")
            if key not in methods:
                methods[key] = MethodSignals(*key)
            return methods[key]

        for sample in by_name["calls"]:
            signals = method(sample.labels)
            signals.rate += sample.value
            code = sample.labels.get("grpc_code", "")
            if code != "OK" and sample.value > 0:
                signals.errors[code] = signals.errors.get(code, 0.0) + sample.value
        for name, attr in (("p50", "p50_ms"), ("p99", "p99_ms")):
            for sample in by_name[name]:
                setattr(method(sample.labels), attr, sample.value * 1000)
        instances: dict[tuple[str, str, str], tuple[float, float]] = {}
        for sample in by_name["instances"]:
            key = (sample.labels.get("service", ""), sample.labels.get("version", ""), sample.labels.get("grpc", ""))
            rate, errors = instances.get(key, (0.0, 0.0))
            failed = sample.value if sample.labels.get("grpc_code") != "OK" else 0.0
            instances[key] = (rate + sample.value, errors + failed)
        breakers = [
            {
                "service": s.labels.get("service", ""),
                "version": s.labels.get("version", ""),
                "target": s.labels.get("target", ""),
                "state": s.labels.get("agentmesh_circuit_breaker_state", ""),
            }
            for s in by_name["breakers"]
        ]
        up = {s.labels.get("grpc", ""): s.value == 1 for s in by_name["up"]}
        return Signals(list(methods.values()), instances, breakers, up)
