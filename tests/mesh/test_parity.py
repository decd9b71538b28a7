"""Envoy and Istio, read back from the committed files, carry the same traffic and auth policy.

Both are rendered from mesh/policy.yaml; this test reads the *outputs* and reduces each to
the same neutral form, so a renderer that drops or mistranslates a setting on one side fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
HEALTH = "/grpc.health.v1.Health/Check"
HTTP_DOCS = "/.well-known/"
Summary = dict[tuple[Any, ...], Any]


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _envoy_configs() -> list[dict[str, Any]]:
    return [doc for path in sorted((REPO / "envoy").glob("*.yaml")) for doc in _load(path)]


def _istio(kind: str) -> list[dict[str, Any]]:
    return [o for path in sorted((REPO / "istio").glob("*.yaml")) for o in _load(path) if o.get("kind") == kind]


def _seconds(text: str) -> float:
    return float(text.removesuffix("s"))


# --------------------------------------------------------------------------- Envoy side


def _envoy_match(match: dict[str, Any]) -> tuple[str, str]:
    return ("exact", match["path"]) if "path" in match else ("prefix", match["prefix"])


def _envoy_routes() -> Summary:
    summary: Summary = {}
    for config in _envoy_configs():
        for listener in config["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                hcm = chain["filters"][0]["typed_config"]
                for host in hcm["route_config"]["virtual_hosts"]:
                    for route in host["routes"]:
                        action = route["route"]
                        if "cluster" in action and action["cluster"].startswith("local_app"):
                            continue  # an inbound hop to its own app (gRPC or its HTTP side)
                        headers = {h["name"]: h["string_match"]["exact"] for h in route["match"].get("headers", [])}
                        if "weighted_clusters" in action:
                            split = {c["name"]: c["weight"] for c in action["weighted_clusters"]["clusters"]}
                        else:
                            split = {action["cluster"]: 100}
                        service = next(iter(split)).rsplit("_", 1)[0]
                        retry = action.get("retry_policy")
                        fault = route.get("typed_per_filter_config", {}).get("envoy.filters.http.fault", {})
                        key = (service, *_envoy_match(route["match"]), tuple(sorted(headers.items())))
                        value = {
                            "split": {c.rsplit("_", 1)[1]: w for c, w in split.items()},
                            "timeout": _seconds(action["max_stream_duration"]["max_stream_duration"]),
                            "retries": None
                            if retry is None
                            else (retry["num_retries"], _seconds(retry["per_try_timeout"]), retry["retry_on"]),
                            "delay": _seconds(fault["delay"]["fixed_delay"]) if "delay" in fault else None,
                            "abort": fault["abort"]["grpc_status"] if "abort" in fault else None,
                        }
                        # Every caller's sidecar renders the same table for a callee.
                        assert summary.setdefault(key, value) == value, key
    return summary


def _envoy_clusters() -> Summary:
    summary: Summary = {}
    for config in _envoy_configs():
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"].startswith("local_app"):
                continue
            service = cluster["name"].rsplit("_", 1)[0]
            [limits] = cluster["circuit_breakers"]["thresholds"]
            outliers = cluster["outlier_detection"]
            value = {
                "max_connections": limits["max_connections"],
                "max_pending_requests": limits["max_pending_requests"],
                "max_requests": limits["max_requests"],
                "max_retries": limits["max_retries"],
                "consecutive_errors": outliers["consecutive_5xx"],
                "interval": _seconds(outliers["interval"]),
                "base_ejection_time": _seconds(outliers["base_ejection_time"]),
                "max_ejection_percent": outliers["max_ejection_percent"],
            }
            assert summary.setdefault((service,), value) == value, service
    return summary


def _envoy_callers() -> Summary:
    summary: Summary = {}
    for config in _envoy_configs():
        service = config["node"]["cluster"]
        for listener in config["static_resources"]["listeners"]:
            if listener["name"] != "inbound":
                continue
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            [rbac] = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.rbac"]
            for policy in rbac["typed_config"]["rules"]["policies"].values():
                [principal] = policy["principals"]
                who = principal["authenticated"]["principal_name"]["exact"].removeprefix("spiffe://")
                rules = policy["permissions"][0]["or_rules"]["rules"]
                paths: Any = (
                    "*"
                    if rules == [{"any": True}]
                    else frozenset(
                        m["url_path"]["path"].get("exact") or m["url_path"]["path"]["prefix"] + "*" for m in rules
                    )
                )
                summary[(service, who)] = paths
    return summary


def _envoy_edge_auth() -> dict[str, Any]:
    """What the edge demands of a caller: whose tokens, for which audience, where they are not needed."""
    [edge] = _load(REPO / "envoy" / "edge.yaml")
    [listener] = edge["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    [jwt] = [f["typed_config"] for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn"]
    [provider] = jwt["providers"].values()
    *public, required = jwt["rules"]
    # Everything not public needs the one provider.
    assert required == {"match": {"prefix": "/"}, "requires": {"provider_name": next(iter(jwt["providers"]))}}
    assert all("requires" not in rule for rule in public)
    return {
        "issuer": provider["issuer"],
        "audiences": provider["audiences"],
        "forwarded": provider["forward"],
        "public": frozenset(m["match"].get("path") or m["match"]["prefix"] + "*" for m in public),
    }


# --------------------------------------------------------------------------- Istio side


def _istio_match(uri: dict[str, str]) -> tuple[str, str]:
    return ("exact", uri["exact"]) if "exact" in uri else ("prefix", uri["prefix"])


def _istio_routes() -> Summary:
    summary: Summary = {}
    for service in _istio("VirtualService"):
        for http in service["spec"]["http"]:
            [match] = http["match"]
            headers = {name: m["exact"] for name, m in match.get("headers", {}).items()}
            uri = match.get("uri", {"prefix": "/"})
            destination_service = http["route"][0]["destination"]["host"].split(".")[0]
            retries = http["retries"]
            fault = http.get("fault", {})
            key = (destination_service, *_istio_match(uri), tuple(sorted(headers.items())))
            summary[key] = {
                "split": {r["destination"]["subset"]: r.get("weight", 100) for r in http["route"]},
                "timeout": _seconds(http["timeout"]),
                "retries": None
                if retries["attempts"] == 0
                else (retries["attempts"], _seconds(retries["perTryTimeout"]), retries["retryOn"]),
                "delay": _seconds(fault["delay"]["fixedDelay"]) if "delay" in fault else None,
                "abort": _GRPC_CODES[fault["abort"]["grpcStatus"]] if "abort" in fault else None,
            }
    return summary


_GRPC_CODES = {"CANCELLED": 1, "DEADLINE_EXCEEDED": 4, "RESOURCE_EXHAUSTED": 8, "INTERNAL": 13, "UNAVAILABLE": 14}


def _istio_clusters() -> Summary:
    summary: Summary = {}
    for rule in _istio("DestinationRule"):
        policy = rule["spec"]["trafficPolicy"]
        pool, outliers = policy["connectionPool"], policy["outlierDetection"]
        summary[(rule["spec"]["host"].split(".")[0],)] = {
            "max_connections": pool["tcp"]["maxConnections"],
            "max_pending_requests": pool["http"]["http1MaxPendingRequests"],
            "max_requests": pool["http"]["http2MaxRequests"],
            "max_retries": pool["http"]["maxRetries"],
            "consecutive_errors": outliers["consecutive5xxErrors"],
            "interval": _seconds(outliers["interval"]),
            "base_ejection_time": _seconds(outliers["baseEjectionTime"]),
            "max_ejection_percent": outliers["maxEjectionPercent"],
        }
    return summary


def _istio_callers() -> Summary:
    summary: Summary = {}
    meshed = {config["node"]["cluster"] for config in _envoy_configs()}
    for policy in _istio("AuthorizationPolicy"):
        if policy["spec"]["action"] == "DENY":
            continue  # the token requirement (below), not a caller allow-list
        service = policy["spec"]["selector"]["matchLabels"]["app"]
        if service not in meshed:
            continue  # a store (PostgreSQL, Redis): Kubernetes only, nothing to compare with

        assert policy["spec"]["action"] == "ALLOW"
        for rule in policy["spec"]["rules"]:
            [source] = rule["from"]
            [who] = source["source"]["principals"]
            paths: Any = "*" if "to" not in rule else frozenset(rule["to"][0]["operation"]["paths"])
            summary[(service, who)] = paths
    return summary


def _istio_edge_auth() -> dict[str, Any]:
    [rule] = _istio("RequestAuthentication")
    [jwt] = rule["spec"]["jwtRules"]
    [deny] = [p for p in _istio("AuthorizationPolicy") if p["spec"]["action"] == "DENY"]
    # Both sit at the edge's upstream: the gateway.
    assert rule["spec"]["selector"] == deny["spec"]["selector"] == {"matchLabels": {"app": "gateway"}}
    [denied] = deny["spec"]["rules"]
    [source] = denied["from"]
    [operation] = denied["to"]
    # Denied: no principal from this issuer, on any path but the public ones.
    assert source["source"] == {"notRequestPrincipals": [f"{jwt['issuer']}/*"]}
    return {
        "issuer": jwt["issuer"],
        "audiences": jwt["audiences"],
        "forwarded": jwt["forwardOriginalToken"],
        "public": frozenset(operation["operation"]["notPaths"]),
    }


def _deployment_auth() -> dict[str, dict[str, Any]]:
    """Each Deployment's own token check (``AGENTMESH_<SERVICE>_AUTH``)."""
    checks: dict[str, dict[str, Any]] = {}
    for deployment in _istio("Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        [auth] = [e["value"] for e in container["env"] if e["name"].endswith("_AUTH")]
        checks[deployment["metadata"]["name"]] = json.loads(auth)
    return checks


# --------------------------------------------------------------------------- parity


def test_routes_carry_the_same_weights_timeouts_retries_and_faults() -> None:
    envoy, istio = _envoy_routes(), _istio_routes()
    assert envoy == istio
    # Sanity: the comparison covered the canary and the retried reads.
    assert envoy[("agent", "prefix", "/", ())]["split"] == {"v1": 90, "v2": 10}
    assert envoy[("agent", "exact", "/agentmesh.agent.v1.AgentService/GetRun", ())]["retries"] is not None


def test_clusters_carry_the_same_breakers_and_outlier_detection() -> None:
    assert _envoy_clusters() == _istio_clusters()


def test_sidecars_and_authorization_policies_allow_the_same_callers_per_method() -> None:
    envoy, istio = _envoy_callers(), _istio_callers()
    assert envoy == istio
    assert ("rag", "agentmesh.local/ns/default/sa/agent") in envoy
    assert all(paths == "*" or HEALTH in paths for paths in envoy.values())


def test_the_edge_and_the_ingress_demand_the_same_tokens_and_leave_the_same_methods_public() -> None:
    envoy, istio = _envoy_edge_auth(), _istio_edge_auth()
    assert envoy == istio
    assert "/grpc.health.v1.Health/*" in envoy["public"]
    assert not any(m.startswith("/agentmesh.") for m in envoy["public"])


def test_every_deployment_checks_the_forwarded_token_as_the_edge_does() -> None:
    edge = _envoy_edge_auth()
    checks = _deployment_auth()
    agents = {f"agent-{v}-{role}" for v in ("v1", "v2") for role in ("serve", "execute")}
    assert set(checks) == {"gateway-v1", *agents, "rag-v1"}
    for name, auth in checks.items():
        assert auth["issuer"] == edge["issuer"], name
        assert [auth["audience"]] == edge["audiences"], name
        # The edge's public HTTP documents (the Agent Card, MCP's resource metadata) are no gRPC methods.
        assert frozenset(auth["public_methods"]) == {p for p in edge["public"] if not p.startswith(HTTP_DOCS)}, name
