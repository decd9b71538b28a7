"""The whole mesh on one machine: every instance's sidecar and the edge at the policy's local ports."""

from __future__ import annotations

from pathlib import Path

from mesh.certs import cert_paths
from mesh.edge_config import edge_bootstrap
from mesh.envoy_config import Address, Config, sidecar_bootstrap
from mesh.policy import Policy

LOOPBACK = "127.0.0.1"
DESCRIPTOR_SET = Path("gen/agentmesh.pb")


def instance_name(service: str, version: str) -> str:
    return f"{service}-{version}"


def split_instance(name: str) -> tuple[str, str]:
    service, _, version = name.rpartition("-")
    return service, version


def local_upstreams(policy: Policy, callee: str) -> dict[str, list[Address]]:
    """Each version of ``callee`` at its local sidecar's inbound port."""
    instances = policy.local.instances
    return {
        version: [Address(LOOPBACK, instances[instance_name(callee, version)].inbound)]
        for version in policy.services[callee].versions
    }


def local_sidecars(policy: Policy, *, certs_dir: Path | None = None) -> dict[str, Config]:
    """Instance name -> sidecar bootstrap for the local layout."""
    certs_dir = certs_dir or Path(policy.local.certs_dir)
    configs: dict[str, Config] = {}
    for name, ports in policy.local.instances.items():
        service, version = split_instance(name)
        configs[name] = sidecar_bootstrap(
            policy,
            service=service,
            version=version,
            app=Address(LOOPBACK, ports.app),
            inbound=Address(LOOPBACK, ports.inbound),
            admin_port=ports.admin,
            outbound_ports=ports.outbound,
            upstreams={callee: local_upstreams(policy, callee) for callee in policy.callees(service)},
            certs=cert_paths(certs_dir, service),
            app_http=None if ports.http is None else Address(LOOPBACK, ports.http),
        )
    return configs


def local_edge(
    policy: Policy, *, certs_dir: Path | None = None, descriptor_set: Path | None = DESCRIPTOR_SET
) -> Config:
    certs_dir = certs_dir or Path(policy.local.certs_dir)
    return edge_bootstrap(
        policy,
        listen=Address(LOOPBACK, policy.local.edge.port),
        admin_port=policy.local.edge.admin,
        upstreams=local_upstreams(policy, policy.edge.upstream),
        certs=cert_paths(certs_dir, "edge"),
        descriptor_set=descriptor_set,
        jwks_file=Path(policy.local.jwks_file),
    )


def mesh_identities(policy: Policy) -> dict[str, str]:
    """Certificate name -> SPIFFE ID for everything that needs a certificate."""
    return {name: policy.spiffe_id(name) for name in [*policy.services, "edge"]}
