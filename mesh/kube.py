"""Kubernetes object pieces both manifest renderers use: names, identities, locked-down pods."""

from __future__ import annotations

from typing import Any

from mesh.policy import Policy, Resources

Manifest = dict[str, Any]


def meta(policy: Policy, name: str, **labels: str) -> Manifest:
    metadata: Manifest = {"name": name, "namespace": policy.namespace}
    if labels:
        metadata["labels"] = labels
    return metadata


def host(policy: Policy, service: str) -> str:
    return f"{service}.{policy.namespace}.svc.cluster.local"


def principal(policy: Policy, caller: str) -> str:
    """Istio's principal form of a SPIFFE ID: the URI without ``spiffe://``."""
    return policy.spiffe_id(caller).removeprefix("spiffe://")


def service_account(policy: Policy, name: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(policy, name, app=name),
        # The pod needs no Kubernetes API access; Istio's identity comes from the SA name.
        "automountServiceAccountToken": False,
    }


def pod_security(uid: int) -> Manifest:
    """Non-root with a fixed uid, files on volumes owned by its group, the default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# The root filesystem is read-only: whatever a container writes goes to a declared volume.
CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def resources(spec: Resources) -> Manifest:
    # No CPU limit (throttling hurts tail latency); memory is capped at what is requested.
    return {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": {"memory": spec.memory}}
