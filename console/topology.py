"""The service graph: nodes from discovery, edges from the calls actually observed.

Services export server-side metrics only (calls by method and code, interceptors/metrics.py),
which say how often each method of a service was called but not by whom. Trace spans say
by whom: a server span's parent belongs to its caller. So each edge caller → callee carries the
callee's Prometheus rate for each method, times the share of that method's recent spans whose
parent is in ``caller``; a server span without a parent in the ring came from outside the mesh
(``client``). Without Prometheus, edges fall back to span counts over the window.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from console.envoy_hosts import Ejection
from console.inventory import HEALTH_ORDER, Instance
from console.prometheus import Signals
from console.trace_store import Span

CLIENT = "client"  # callers outside the mesh (no span of theirs reached the console)


def service_of(trace_service: str) -> str:
    """OTel ``service.name`` ("agentmesh-gateway") to the mesh's service name ("gateway")."""
    return trace_service.removeprefix("agentmesh-")


def method_of(span_name: str) -> str:
    return span_name if span_name.startswith("/") else f"/{span_name}"


@dataclass
class EdgeObservations:
    # (callee, method) -> caller -> [calls, errors] seen in spans
    by_method: dict[tuple[str, str], dict[str, list[int]]]
    window_s: float


def observe_calls(spans: Iterable[Span], *, window_s: float, now_ns: int | None = None) -> EdgeObservations:
    """Count server spans of the last ``window_s`` by (callee, method) and caller."""
    spans = list(spans)
    now_ns = time.time_ns() if now_ns is None else now_ns
    since = now_ns - int(window_s * 1e9)
    by_id = {s.span_id: s for s in spans}
    by_method: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for span in spans:
        if span.kind != "SERVER" or span.start_ns < since:
            continue
        callee = service_of(span.service)
        caller = CLIENT
        parent = by_id.get(span.parent_span_id)
        # Walk up past the callee's own spans (none today, but an internal span may sit between).
        while parent is not None and service_of(parent.service) == callee:
            parent = by_id.get(parent.parent_span_id)
        if parent is not None:
            caller = service_of(parent.service)
        counts = by_method[(callee, method_of(span.name))][caller]
        counts[0] += 1
        counts[1] += span.failed
    return EdgeObservations(by_method, window_s)


def build(
    instances: list[Instance],
    signals: Signals | None,
    observed: EdgeObservations,
    ejections: Mapping[str, Sequence[Ejection]] | None = None,
) -> dict[str, Any]:
    """The graph the page draws: {nodes: [...], edges: [...]}.

    ``ejections`` (instance address -> which sidecars keep traffic off it, and why) is None when
    no Envoy is there to ask: ``ejection_source`` says so rather than every instance looking in.
    """
    services: dict[str, list[Instance]] = defaultdict(list)
    for instance in instances:
        services[instance.service].append(instance)
    edges: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: {"rate": 0.0, "errors": 0.0})
    if signals is not None:
        for (callee, method), m in signals.method_rates().items():
            callers = observed.by_method.get((callee, method))
            if not callers and m.rate == 0:
                continue  # a method called once long ago: no edge to draw, none to guess a caller for
            total = sum(c[0] for c in callers.values()) if callers else 0
            shares = {caller: c[0] / total for caller, c in callers.items()} if callers and total else {CLIENT: 1.0}
            # Errors split by who got them in the spans (bad requests from one caller are not another's).
            failed = sum(c[1] for c in callers.values()) if callers else 0
            error_shares = {caller: c[1] / failed for caller, c in callers.items()} if callers and failed else shares
            for caller, share in shares.items():
                edge = edges[(caller, callee)]
                edge["rate"] += m.rate * share
                edge["errors"] += sum(m.errors.values()) * error_shares.get(caller, 0.0)
    else:
        for (callee, _), callers in observed.by_method.items():
            for caller, (calls, errors) in callers.items():
                edge = edges[(caller, callee)]
                edge["rate"] += calls / observed.window_s
                edge["errors"] += errors / observed.window_s
    # Edges seen in spans but with no rate yet (the first scrape is pending) still show, at 0.
    for (callee, _), callers in observed.by_method.items():
        for caller in callers:
            edges.setdefault((caller, callee), {"rate": 0.0, "errors": 0.0})
    breakers = {(b["service"], b["target"]): b["state"] for b in (signals.breakers if signals else [])}
    per_instance = signals.instances if signals else {}
    nodes: list[dict[str, Any]] = []
    if any(caller == CLIENT for caller, _ in edges):
        nodes.append({"id": CLIENT, "kind": "client", "instances": [], "health": "passing"})
    for service, members in sorted(services.items(), key=lambda kv: _order(kv[0])):
        rows = []
        for instance in sorted(members, key=lambda i: (i.version, i.address)):
            calls_s, errors_s = next(
                (v for (s, _, grpc), v in per_instance.items() if s == service and grpc == instance.address),
                (0.0, 0.0),
            )
            ejected = [e.to_json() for e in (ejections or {}).get(instance.address, ())]
            health = _worse(instance.health, "ejected") if ejected else instance.health
            rows.append(
                {
                    **instance.to_json(),
                    "health": health,
                    "ejected_by": ejected,
                    "rate": calls_s,
                    "error_rate": errors_s / calls_s if calls_s else 0.0,
                }
            )
        worst = max((r["health"] for r in rows), key=HEALTH_ORDER.index, default="critical")
        nodes.append({"id": service, "kind": "service", "instances": rows, "health": worst})
    known = {n["id"] for n in nodes}
    for caller, callee in list(edges):
        for name in (caller, callee):
            if name not in known:  # seen in traffic, not in discovery: still drawn, marked unknown
                nodes.append({"id": name, "kind": "service", "instances": [], "health": "critical"})
                known.add(name)
    return {
        "nodes": nodes,
        "edges": [
            {
                "source": caller,
                "target": callee,
                "rate": e["rate"],
                "error_rate": e["errors"] / e["rate"] if e["rate"] else 0.0,
                "breaker": breakers.get((caller, callee), ""),
            }
            for (caller, callee), e in sorted(edges.items(), key=lambda kv: (_order(kv[0][0]), _order(kv[0][1])))
        ],
        "canary": signals.canary_split() if signals else {},
        "source": "prometheus+traces" if signals is not None else "traces",
        "ejection_source": "envoy" if ejections is not None else "",
    }


def _worse(a: str, b: str) -> str:
    return max(a, b, key=HEALTH_ORDER.index)


def _order(name: str) -> tuple[int, str]:
    """Left to right as calls flow: client, edge, gateway, agent, rag, anything else."""
    rank = {CLIENT: 0, "edge": 1, "gateway": 2, "agent": 3, "rag": 4}
    return rank.get(name, 5), name
