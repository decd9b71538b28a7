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

from mesh.policy import Policy

REPO = Path(__file__).resolve().parents[2]
ISTIO = REPO / "istio"
KUBERNETES_VERSION = "1.33.0"

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

    assert {a["metadata"]["name"] for a in by_kind["ServiceAccount"]} == set(policy.services)
    for service in by_kind["Service"]:
        for port in service["spec"]["ports"]:
            assert port["name"].startswith("grpc-") and port["appProtocol"] == "grpc"
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    assert set(deployments) == {f"{s}-{v}" for s, spec in policy.services.items() for v in spec.versions}
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
