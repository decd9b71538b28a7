"""Every scenario `make bench` runs, and the targets they are held to: small declarative entries.

A scenario is a topology (what runs between client and backend), the call it makes, extra
headers, and the scenario its ratio is taken against (by default the bare baseline, measured in
the same pass with the same client).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.backend import BackendSpec
from bench.topology import (
    Direct,
    Topology,
    ViaEnvoy,
    ViaFloorProxy,
    ViaGateway,
    ViaMeshEdge,
    ViaMeshInbound,
    ViaMeshSidecars,
)

CLIENTS = ("h2load", "pyclient")
# The scenario every other one is compared with unless it names another baseline.
BASELINE = "bare"


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    topology: Topology
    call: str = "unary"
    clients: tuple[str, ...] = CLIENTS
    headers: tuple[tuple[str, str], ...] = ()
    # A header given a new value on every call (only the Python client can do that).
    unique_header: str | None = None
    # The Python client guards its channel with a circuit breaker (a client interceptor).
    client_breaker: bool = False
    # h2load connections, when not the harness's default (the kernel spreads connections, not
    # calls, over processes sharing a port, so a scaling scenario needs several).
    h2load_connections: int | None = None
    baseline: str = BASELINE


@dataclass(frozen=True)
class Target:
    """A bound on one scenario's result: `metric` of `scenario` with `client`, against `bound`."""

    title: str
    scenario: str
    client: str
    metric: str  # "ratio" (throughput vs baseline) or "p99_ratio" (p99 latency vs baseline)
    bound: float
    at_least: bool = True

    def met(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound


BARE = BackendSpec()
CHAIN = BackendSpec(bootstrap=True, interceptors=("chain",))
STORES = ("memory", "sqlite", "redis", "postgres")


def alone(interceptor: str, summary: str) -> Scenario:
    return Scenario(interceptor, summary, Direct(BackendSpec(interceptors=(interceptor,))))


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("bare", "grpc.aio server, no interceptors (the baseline)", Direct(BARE)),
    Scenario(
        "bootstrap",
        "the shared bootstrap: health, reflection, the drain gate and request decoding compiled into the handlers",
        Direct(BackendSpec(bootstrap=True)),
    ),
    alone("auth", "auth: ES256 bearer token (verified once, then cached), the mesh's scope table"),
    Scenario(
        "breaker",
        "circuit breaker: a client interceptor, so its cost shows in the client's CPU",
        Direct(BARE),
        clients=("pyclient",),
        client_breaker=True,
    ),
    alone("tracing", "tracing as configured by default: no exporter, so the trace context only"),
    alone("tracing-sampled", "tracing with a span exporter, 10% of new traces recorded"),
    alone("otel-instrumentation", "the stock opentelemetry-instrumentation-grpc interceptor, every call recorded"),
    alone("metrics", "Prometheus metrics (calls by code, latency histogram, in flight)"),
    alone("logs", "access log: one JSON line per call"),
    alone("errors", "recovery: crashes become INTERNAL"),
    alone("deadline", "deadline: default for calls without one, refuse calls already late"),
    *(
        Scenario(
            f"idempotency-{store}",
            f"idempotency keys in {store}: a new key on every call (first executions)",
            Direct(BackendSpec(interceptors=(f"idempotency-{store}",))),
            clients=("pyclient",),
            unique_header="idempotency-key",
        )
        for store in STORES
    ),
    *(
        Scenario(
            f"replay-{store}",
            f"idempotency keys in {store}: the same key on every call (replays of one stored outcome)",
            Direct(BackendSpec(interceptors=(f"idempotency-{store}",))),
            headers=(("idempotency-key", f"bench-replay-{store}"),),
            baseline=f"idempotency-{store}",
        )
        for store in STORES
    ),
    Scenario("chain", "the full chain, as the services build it, through the shared bootstrap", Direct(CHAIN)),
    Scenario("gateway", "one gateway hop (the gateway with its own chain) → bare backend", ViaGateway(BARE)),
    Scenario(
        "gateway-floor",
        "the grpc.aio floor under a gateway hop: a forwarder with no chain and no policies → bare backend",
        ViaFloorProxy(BARE),
    ),
    Scenario(
        "gateway-8-connections",
        "one gateway hop, callers on 8 connections (the baseline of gateway-processes)",
        ViaGateway(BARE),
        clients=("h2load",),
        h2load_connections=8,
    ),
    Scenario(
        "gateway-processes",
        "the same with two gateway processes on the port (AGENTMESH_GATEWAY_PROCESSES=2): scaling on these cores",
        ViaGateway(BARE, gateway_env=(("AGENTMESH_GATEWAY_PROCESSES", "2"),)),
        clients=("h2load",),
        h2load_connections=8,
        baseline="gateway-8-connections",
    ),
    Scenario(
        "gateway-chain",
        "client → gateway → backend, the full chain (auth included) on both",
        ViaGateway(CHAIN, gateway_auth=True),
    ),
    Scenario("envoy", "one Envoy hop, plaintext, router only (the floor under the mesh's sidecars)", ViaEnvoy(BARE)),
    Scenario("envoy-mtls", "the mesh's sidecar-to-sidecar hop: two Envoys, mTLS and RBAC", ViaMeshSidecars(BARE)),
    Scenario(
        "envoy-mtls-untuned",
        "the same sidecar pair with Envoy's defaults (before the policy's proxy tuning)",
        ViaMeshSidecars(BARE, tuned=False),
    ),
    Scenario(
        "sidecar-inbound-mtls",
        "one mesh sidecar hop: the client itself speaks mTLS to the callee's sidecar",
        ViaMeshInbound(BARE),
        clients=("pyclient",),
    ),
    Scenario("edge-sidecar", "the mesh's way in: TLS to the edge Envoy, mTLS to the sidecar", ViaMeshEdge(BARE)),
    Scenario("stream", "server streaming, 50 events per call (ratio in events/s)", Direct(BARE), call="stream"),
)

TARGETS: tuple[Target, ...] = (
    Target("full interceptor chain ≥ 0.8x bare throughput", "chain", "h2load", "ratio", 0.8),
    Target("gateway hop ≥ 0.45x bare throughput", "gateway", "h2load", "ratio", 0.45),
    Target(
        "gateway process CPU per forwarded call ≤ 2.0x a bare server's per call",
        "gateway",
        "h2load",
        "process_cpu_ratio.gateway",
        2.0,
        at_least=False,
    ),
    Target("client → gateway → backend, both chains, ≥ 0.4x bare throughput", "gateway-chain", "h2load", "ratio", 0.4),
    Target("Envoy mTLS sidecar hop ≥ 0.8x bare throughput", "envoy-mtls", "h2load", "ratio", 0.8),
    *(
        Target(f"idempotent replay ≥ 1.0x a first execution ({store})", f"replay-{store}", "pyclient", "ratio", 1.0)
        for store in STORES
    ),
    Target(
        "p99 client → gateway → backend, full chain, ≤ 3x bare p99",
        "gateway-chain",
        "h2load",
        "p99_ratio",
        3.0,
        at_least=False,
    ),
)


def by_name(names: list[str] | None) -> list[Scenario]:
    """The named scenarios (all by default) plus every baseline they are compared with, baselines first."""
    known = {s.name: s for s in SCENARIOS}
    if not names:
        return list(SCENARIOS)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; known: {sorted(known)}")
    wanted: list[str] = []
    for name in names:
        # The baselines' own baselines too (gateway-processes → gateway-8-connections → bare).
        chain = [name]
        while known[chain[0]].baseline != chain[0] and known[chain[0]].baseline not in chain:
            chain.insert(0, known[chain[0]].baseline)
        for needed in chain:
            if needed not in wanted:
                wanted.append(needed)
    return [known[n] for n in wanted]
