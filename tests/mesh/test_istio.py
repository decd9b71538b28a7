"""The Kubernetes and Istio manifests, validated offline and strictly (a typo is an error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.istio.networking.v1 import DestinationRule, Gateway, VirtualService
from cloudcoil.models.istio.security.v1 import AuthorizationPolicy, PeerAuthentication, RequestAuthentication
from pydantic import BaseModel

from mesh.istio_manifests import DATA_DIR, manifest_files
from mesh.policy import DEFAULT_POLICY_PATH, Policy

REPO = Path(__file__).resolve().parents[2]
ISTIO = REPO / "istio"
KUBERNETES_VERSION = "1.33.0"
STORES = ("postgres", "redis")

ISTIO_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("networking.istio.io/v1", "Gateway"): Gateway,
    ("networking.istio.io/v1", "VirtualService"): VirtualService,
    ("networking.istio.io/v1", "DestinationRule"): DestinationRule,
    ("security.istio.io/v1", "PeerAuthentication"): PeerAuthentication,
    ("security.istio.io/v1", "AuthorizationPolicy"): AuthorizationPolicy,
    ("security.istio.io/v1", "RequestAuthentication"): RequestAuthentication,
}


def _objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(ISTIO.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return objects


def _is_istio(obj: dict[str, Any]) -> bool:
    return str(obj["apiVersion"]).endswith(".istio.io/v1")


def _istio_problems(obj: dict[str, Any]) -> list[str]:
    """Fields the Istio CRD schema does not know (the models drop them) or reads differently."""
    model = ISTIO_MODELS[(obj["apiVersion"], obj["kind"])]
    parsed = model.model_validate(obj).model_dump(by_alias=True, exclude_unset=True, mode="json")
    return _differences(obj, parsed, obj["kind"])


def _differences(written: Any, parsed: Any, where: str) -> list[str]:
    if isinstance(written, dict) and isinstance(parsed, dict):
        problems = [f"{where}.{key}: not in the schema" for key in written if key not in parsed]
        return problems + [
            p for key in written if key in parsed for p in _differences(written[key], parsed[key], f"{where}.{key}")
        ]
    if isinstance(written, list) and isinstance(parsed, list) and len(written) == len(parsed):
        return [
            p for i, (w, q) in enumerate(zip(written, parsed, strict=True)) for p in _differences(w, q, f"{where}[{i}]")
        ]
    return [] if written == parsed else [f"{where}: wrote {written!r}, schema reads {parsed!r}"]


OBJECTS = _objects()
IDS = [f"{o['kind']}/{o['metadata']['name']}" for o in OBJECTS]


@pytest.mark.parametrize("obj", OBJECTS, ids=IDS)
def test_each_manifest_validates_strictly(obj: dict[str, Any]) -> None:
    if _is_istio(obj):
        assert _istio_problems(obj) == []
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_misspelt_istio_field_is_caught() -> None:
    [rule] = [o for o in OBJECTS if o["kind"] == "DestinationRule" and o["metadata"]["name"] == "agent"]
    outliers = rule["spec"]["trafficPolicy"]["outlierDetection"]
    typo = {**rule, "spec": {**rule["spec"], "trafficPolicy": {**rule["spec"]["trafficPolicy"]}}}
    typo["spec"]["trafficPolicy"]["outlierDetection"] = {**outliers, "consecutive5xxError": 3}

    assert _istio_problems(typo) == [
        "DestinationRule.spec.trafficPolicy.outlierDetection.consecutive5xxError: not in the schema"
    ]


def test_a_misspelt_kubernetes_field_is_caught() -> None:
    [account] = [o for o in OBJECTS if o["kind"] == "ServiceAccount"][:1]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**account, "automountToken": False}, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest_file() -> None:
    kustomization = yaml.safe_load((ISTIO / "kustomization.yaml").read_text())
    files = {p.name for p in ISTIO.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_workloads_follow_the_platform_rules(policy: Policy) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in OBJECTS:
        by_kind.setdefault(obj["kind"], []).append(obj)

    assert {a["metadata"]["name"] for a in by_kind["ServiceAccount"]} == {*policy.services, *STORES}
    for service in by_kind["Service"]:
        protocols = {"tcp"} if service["metadata"]["name"] in STORES else {"grpc", "http"}
        for port in service["spec"]["ports"]:
            # Istio picks the protocol from the port's name and appProtocol.
            assert port["appProtocol"] in protocols and port["name"].startswith(f"{port['appProtocol']}-")
    for workload in by_kind["Deployment"] + by_kind["StatefulSet"]:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        [container] = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert "readinessProbe" in container and "livenessProbe" in container
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    assert set(deployments) == _deployment_names(policy)
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]
        assert pod["metadata"]["labels"]["version"] == deployment["metadata"]["labels"]["version"]
        assert pod["spec"]["serviceAccountName"] == pod["metadata"]["labels"]["app"]
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        [container] = pod["spec"]["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert "grpc" in container["readinessProbe"] and "grpc" in container["livenessProbe"]
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}


def _deployment_names(policy: Policy) -> set[str]:
    """``<service>-<version>``, or ``<service>-<version>-<role>`` where the policy splits by role."""
    return {
        f"{service}-{version}" if role == "all" else f"{service}-{version}-{role}"
        for service, spec in policy.services.items()
        for version in spec.versions
        for role in spec.pods_per_role()
    }


def test_mesh_wide_mtls_is_strict_and_destinations_use_istio_mutual() -> None:
    [peer] = [o for o in OBJECTS if o["kind"] == "PeerAuthentication"]
    assert peer["spec"]["mtls"]["mode"] == "STRICT"
    for rule in (o for o in OBJECTS if o["kind"] == "DestinationRule"):
        assert rule["spec"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"


def test_every_workload_verifies_tokens_with_keys_from_a_mounted_config_map() -> None:
    for deployment in (o for o in OBJECTS if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        [auth] = [json.loads(e["value"]) for e in container["env"] if e["name"].endswith("_AUTH")]
        jwks_dir = str(Path(auth["jwks_file"]).parent)
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == jwks_dir]
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]

        assert mount["readOnly"] is True
        assert volume["configMap"]["name"], deployment["metadata"]["name"]


def _by_name(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == kind}


def _env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def test_every_version_runs_replicas_on_shared_state_with_none_in_its_pods(policy: Policy) -> None:
    for name, deployment in _by_name("Deployment").items():
        labels = deployment["metadata"]["labels"]
        replicas = policy.services[labels["app"]].pods_per_role()[labels.get("role", "all")]
        assert deployment["spec"]["replicas"] == replicas >= 2, name
        # What sits on an emptyDir is a cache the pod rebuilds, never state (which is below).
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        [data_mount] = [m for m in container["volumeMounts"] if m["mountPath"] == DATA_DIR]
        [data_volume] = [v for v in pod["volumes"] if v["name"] == data_mount["name"]]
        assert data_volume["name"] == "cache", name

    agents = [f"agent-{v}-{role}" for v in ("v1", "v2") for role in ("serve", "execute")]
    for name in (*agents, "rag-v1"):
        env = _env(_by_name("Deployment")[name])
        prefix = f"AGENTMESH_{name.split('-')[0].upper()}_"
        # The URL (with its password) comes from a Secret, never from the manifest.
        url = env[prefix + "DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert url == {"name": policy.state.database_secret, "key": name.split("-")[0]}
    for name in agents:
        env = _env(_by_name("Deployment")[name])
        assert env["AGENTMESH_AGENT_EVENT_BUS"]["value"] == "redis"
        assert env["AGENTMESH_AGENT_IDEMPOTENCY_STORE"]["value"] == "redis"
        redis = "redis://redis.default.svc.cluster.local:6379/0"
        assert (
            env["AGENTMESH_AGENT_REDIS_URL"]["value"] == env["AGENTMESH_AGENT_IDEMPOTENCY_REDIS_URL"]["value"] == redis
        )


def test_a_drain_takes_at_most_one_pod_of_each_service_at_a_time(policy: Policy) -> None:
    budgets = _by_name("PodDisruptionBudget")
    # The agent's roles are capacities of their own: one pod of each may go at once. No pod is under
    # two budgets (Kubernetes would refuse to evict it).
    assert set(budgets) == {"gateway", "rag", "agent-serve", "agent-execute"}
    for name, budget in budgets.items():
        service, _, role = name.partition("-")
        labels = {"app": service, "role": role} if role else {"app": service}
        assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}


def test_the_stores_keep_their_data_on_persistent_volumes(policy: Policy) -> None:
    sets = _by_name("StatefulSet")
    assert set(sets) == set(STORES)
    for name, stateful_set in sets.items():
        [claim] = stateful_set["spec"]["volumeClaimTemplates"]
        [container] = stateful_set["spec"]["template"]["spec"]["containers"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert any(m["name"] == claim["metadata"]["name"] for m in container["volumeMounts"]), name
    # One database per service that keeps state, created on the volume's first start.
    init = _by_name("ConfigMap")["postgres-init"]["data"]["01-databases.sql"]
    for database in policy.state.databases.values():
        assert f'CREATE DATABASE "{database}";' in init


def test_only_the_services_that_use_a_store_may_connect_to_it(policy: Policy) -> None:
    policies = _by_name("AuthorizationPolicy")
    for store, users in (("postgres", policy.state.databases), ("redis", policy.state.redis_users)):
        [rule] = policies[store]["spec"]["rules"]
        [source] = rule["from"]
        assert source["source"]["principals"] == [f"agentmesh.local/ns/default/sa/{u}" for u in users]


def test_the_agent_serves_and_executes_in_deployments_of_their_own(policy: Policy) -> None:
    deployments, services = _by_name("Deployment"), _by_name("Service")
    roles = policy.services["agent"].roles
    assert roles is not None
    for version in policy.services["agent"].versions:
        for role, replicas in (("serve", roles.serve), ("execute", roles.execute)):
            deployment = deployments[f"agent-{version}-{role}"]
            labels = {"app": "agent", "version": version, "role": role}
            assert deployment["spec"]["replicas"] == replicas
            assert deployment["spec"]["selector"]["matchLabels"] == labels
            assert deployment["spec"]["template"]["metadata"]["labels"] == {**labels, "sidecar.istio.io/inject": "true"}
            env = _env(deployment)
            assert env["AGENTMESH_AGENT_ROLE"]["value"] == role
            # Both share the runs through one database: the admitted run is claimed from there.
            assert env["AGENTMESH_AGENT_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "agent"
            # Executors take no callers, but their probes stay: the kubelet restarts a stuck one.
            [container] = deployment["spec"]["template"]["spec"]["containers"]
            assert "grpc" in container["readinessProbe"] and "grpc" in container["livenessProbe"]
        assert f"agent-{version}" not in deployments
    # Callers (the Service, hence Istio's endpoints for every subset) reach only the serve pods.
    assert services["agent"]["spec"]["selector"] == {"app": "agent", "role": "serve"}
    assert services["rag"]["spec"]["selector"] == {"app": "rag"}


def test_a_service_without_roles_runs_pods_that_serve_and_execute() -> None:
    raw = yaml.safe_load(DEFAULT_POLICY_PATH.read_text())
    agent = raw["services"]["agent"]
    del agent["roles"]
    agent["replicas"] = 2
    files = manifest_files(Policy.model_validate(raw))

    deployments = {
        d["metadata"]["name"]: d for d in files["deployments.yaml"] if d["metadata"]["labels"]["app"] == "agent"
    }
    assert set(deployments) == {"agent-v1", "agent-v2"}
    for deployment in deployments.values():
        assert deployment["spec"]["replicas"] == 2
        assert "role" not in deployment["spec"]["selector"]["matchLabels"]
        assert "AGENTMESH_AGENT_ROLE" not in _env(deployment)
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    [service] = [s for s in files["services.yaml"] if s["metadata"]["name"] == "agent"]
    assert service["spec"]["selector"] == {"app": "agent"}
    budgets = {b["metadata"]["name"]: b for b in files["poddisruptionbudgets.yaml"]}
    assert budgets["agent"]["spec"]["selector"] == {"matchLabels": {"app": "agent"}}
    assert "agent-serve" not in budgets
