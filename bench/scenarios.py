"""Every scenario `make bench` runs, and the targets they are held to: small declarative entries.

A scenario is a topology (what runs between client and backend), the call it makes, extra
headers, and the scenario its ratio is taken against (by default the bare baseline, measured in
the same pass with the same client).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.backend import BackendSpec
from bench.topology import Direct, Topology, ViaEnvoy, ViaGateway, ViaMeshEdge, ViaMeshInbound, ViaMeshSidecars

CLIENTS = ("h2load", "pyclient")


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
    baseline: str = "bare"


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

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("bare", "grpc.aio server, no interceptors (the baseline)", Direct(BARE)),
    Scenario(
        "bootstrap",
        "the shared bootstrap: health, reflection, drain and decode interceptors",
        Direct(BackendSpec(bootstrap=True)),
    ),
    Scenario("gateway", "one gateway hop: client → gateway → bare backend", ViaGateway(BARE)),
    Scenario("envoy", "one Envoy hop, plaintext, router only (the floor under the mesh's sidecars)", ViaEnvoy(BARE)),
    Scenario("envoy-mtls", "the mesh's sidecar-to-sidecar hop: two Envoys, mTLS and RBAC", ViaMeshSidecars(BARE)),
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
    Target("gateway hop ≥ 0.6x bare throughput", "gateway", "h2load", "ratio", 0.6),
    Target("Envoy mTLS sidecar hop ≥ 0.8x bare throughput", "envoy-mtls", "h2load", "ratio", 0.8),
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
        for needed in (known[name].baseline, name):
            if needed not in wanted:
                wanted.append(needed)
    return [known[n] for n in wanted]
