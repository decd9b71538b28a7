"""Kubernetes + Istio manifests rendered from the same traffic policy as the Envoy configs.

The Istio side expresses each policy setting in Istio's own vocabulary (VirtualService,
DestinationRule, AuthorizationPolicy, ...); ``tests/mesh/test_parity.py`` reads both outputs
back and checks they carry the same weights, timeouts, retries, breakers and callers.
"""

from __future__ import annotations

import json
from typing import Any

from interceptors.selector import path_match
from mesh.policy import Policy, Route, Service, proto_duration

Manifest = dict[str, Any]

IMAGE = "agentmesh"
CONTAINER_PORT_NAME = "grpc-api"
EDGE_GATEWAY = "agentmesh-edge"
EDGE_TLS_SECRET = "agentmesh-edge-tls"
DATA_DIR = "/var/lib/agentmesh"
_HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
_RUN_AS = 10001


def _meta(policy: Policy, name: str, **labels: str) -> Manifest:
    meta: Manifest = {"name": name, "namespace": policy.namespace}
    if labels:
        meta["labels"] = labels
    return meta


def host(policy: Policy, service: str) -> str:
    return f"{service}.{policy.namespace}.svc.cluster.local"


def principal(policy: Policy, caller: str) -> str:
    """Istio's principal form of a SPIFFE ID: the URI without ``spiffe://``."""
    return policy.spiffe_id(caller).removeprefix("spiffe://")


# --------------------------------------------------------------------------- Kubernetes


def service_account(policy: Policy, service: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(policy, service, app=service),
        # The pod needs no Kubernetes API access; Istio's identity comes from the SA name.
        "automountServiceAccountToken": False,
    }


def kubernetes_service(policy: Policy, service: str) -> Manifest:
    spec = policy.services[service]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(policy, service, app=service),
        "spec": {
            "selector": {"app": service},
            "ports": [
                {
                    "name": CONTAINER_PORT_NAME,
                    "port": spec.port,
                    "targetPort": CONTAINER_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                }
            ],
        },
    }


def _service_env(policy: Policy, service: str) -> list[Manifest]:
    prefix = f"AGENTMESH_{service.upper()}_"
    port = policy.services[service].port
    env = [
        {"name": prefix + "HOST", "value": "0.0.0.0"},
        {"name": prefix + "PORT", "value": str(port)},
        {"name": prefix + "DATA_DIR", "value": DATA_DIR},
        {"name": prefix + "LOG_FORMAT", "value": "json"},
    ]
    # Plain Kubernetes DNS names: the sidecar intercepts the call and applies the policy.
    endpoints = {
        callee: [f"{host(policy, callee)}:{policy.services[callee].port}"] for callee in policy.callees(service)
    }
    if service == "gateway":
        env.append({"name": prefix + "BACKENDS", "value": json.dumps(endpoints, separators=(",", ":"))})
    if service == "agent":
        env.append({"name": prefix + "RAG_ENDPOINTS", "value": json.dumps(endpoints["rag"], separators=(",", ":"))})
    return env


def deployment(policy: Policy, service: str, version: str) -> Manifest:
    spec: Service = policy.services[service]
    probe = {"grpc": {"port": spec.port}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    labels = {"app": service, "version": version}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(policy, f"{service}-{version}", **labels),
        "spec": {
            # One pod per version while state lives in the pod (SQLite on an emptyDir): see
            # istio/README.md before scaling.
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "sidecar.istio.io/inject": "true"}},
                "spec": {
                    "serviceAccountName": service,
                    "automountServiceAccountToken": False,
                    # Longer than the service's own drain (health NOT_SERVING, then grace).
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": _RUN_AS,
                        "runAsGroup": _RUN_AS,
                        "fsGroup": _RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": service,
                            "image": f"{IMAGE}:latest",
                            "args": [f"services.{service}"],
                            "ports": [{"name": CONTAINER_PORT_NAME, "containerPort": spec.port, "protocol": "TCP"}],
                            "env": _service_env(policy, service),
                            "readinessProbe": {**probe, "initialDelaySeconds": 2},
                            "livenessProbe": {**probe, "initialDelaySeconds": 10},
                            "resources": {
                                "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
                                "limits": {"memory": spec.resources.memory},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "data", "mountPath": DATA_DIR},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    # The root filesystem is read-only: state and scratch space are explicit.
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


# --------------------------------------------------------------------------- Istio traffic


def _uri_match(pattern: str) -> Manifest:
    return dict(path_match(pattern))


def _destinations(policy: Policy, service: str) -> list[Manifest]:
    spec = policy.services[service]
    port = {"number": spec.port}
    if spec.canary is None:
        return [{"destination": {"host": host(policy, service), "subset": spec.versions[0], "port": port}}]
    return [
        {"destination": {"host": host(policy, service), "subset": version, "port": port}, "weight": weight}
        for version, weight in spec.canary.weights.items()
    ]


def _http_route(name: str, match: list[Manifest], destinations: list[Manifest], route: Route) -> Manifest:
    http: Manifest = {"name": name, "match": match, "route": destinations, "timeout": proto_duration(route.timeout)}
    if route.retries is not None:
        http["retries"] = {
            "attempts": route.retries.attempts,
            "perTryTimeout": proto_duration(route.retries.per_try_timeout),
            "retryOn": ",".join(route.retries.retry_on),
        }
    else:
        # Istio retries twice by default; a route without retries must say so.
        http["retries"] = {"attempts": 0}
    return http


def http_routes(policy: Policy, service: str) -> list[Manifest]:
    """The same ordered route table as ``envoy_config.outbound_routes``, in Istio's terms."""
    spec = policy.services[service]
    routes: list[Manifest] = []
    catch_all = spec.routes[-1].model_copy(update={"retries": None})
    for fault in policy.faults_for(service):
        http = _http_route(
            f"fault-{fault.name}",
            [{"headers": {policy.fault_header: {"exact": fault.name}}}],
            _destinations(policy, service),
            catch_all,
        )
        if fault.delay is not None:
            http["fault"] = {"delay": {"fixedDelay": proto_duration(fault.delay), "percentage": {"value": 100.0}}}
        if fault.abort is not None:
            http["fault"] = {
                "abort": {"grpcStatus": fault.abort.upper().replace("-", "_"), "percentage": {"value": 100.0}}
            }
        routes.append(http)
    for index, route in enumerate(spec.routes):
        for pattern in route.methods:
            name = f"{service}-{index}-{pattern.strip('/').replace('/', '-').replace('*', 'all')}"
            if spec.canary is not None:
                canary = spec.canary
                pinned = [
                    {
                        "destination": {
                            "host": host(policy, service),
                            "subset": canary.version,
                            "port": {"number": spec.port},
                        }
                    }
                ]
                routes.append(
                    _http_route(
                        f"{name}-pinned-{canary.version}",
                        [{"uri": _uri_match(pattern), "headers": {canary.header: {"exact": canary.value}}}],
                        pinned,
                        route,
                    )
                )
            routes.append(_http_route(name, [{"uri": _uri_match(pattern)}], _destinations(policy, service), route))
    return routes


def virtual_service(policy: Policy, service: str) -> Manifest:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": _meta(policy, service),
        "spec": {"hosts": [host(policy, service)], "http": http_routes(policy, service)},
    }


def edge_gateway(policy: Policy) -> Manifest:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": _meta(policy, EDGE_GATEWAY),
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": list(policy.edge.hosts),
                    # A TLS secret in the ingress gateway's namespace (see istio/README.md).
                    "tls": {"mode": "SIMPLE", "credentialName": EDGE_TLS_SECRET},
                }
            ],
        },
    }


def edge_virtual_service(policy: Policy) -> Manifest:
    upstream = policy.edge.upstream
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": _meta(policy, EDGE_GATEWAY),
        "spec": {
            "hosts": list(policy.edge.hosts),
            "gateways": [EDGE_GATEWAY],
            "http": [
                {**route, "headers": {"request": {"remove": [policy.fault_header]}}}
                for route in http_routes(policy, upstream)
            ],
        },
    }


def destination_rule(policy: Policy, service: str) -> Manifest:
    spec = policy.services[service]
    pool, outliers = spec.connection_pool, spec.outlier_detection
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": _meta(policy, service),
        "spec": {
            "host": host(policy, service),
            "trafficPolicy": {
                "connectionPool": {
                    "tcp": {"maxConnections": pool.max_connections},
                    "http": {
                        "http1MaxPendingRequests": pool.max_pending_requests,
                        "http2MaxRequests": pool.max_requests,
                        "maxRetries": pool.max_retries,
                    },
                },
                "outlierDetection": {
                    "consecutive5xxErrors": outliers.consecutive_errors,
                    "interval": proto_duration(outliers.interval),
                    "baseEjectionTime": proto_duration(outliers.base_ejection_time),
                    "maxEjectionPercent": outliers.max_ejection_percent,
                },
                "tls": {"mode": "ISTIO_MUTUAL"},
            },
            "subsets": [{"name": version, "labels": {"version": version}} for version in spec.versions],
        },
    }


# --------------------------------------------------------------------------- Istio security


def peer_authentication(policy: Policy) -> Manifest:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": _meta(policy, "default"),
        "spec": {"mtls": {"mode": "STRICT"}},
    }


def authorization_policy(policy: Policy, service: str) -> Manifest:
    rules: list[Manifest] = []
    for caller, patterns in policy.services[service].callers.items():
        rule: Manifest = {"from": [{"source": {"principals": [principal(policy, caller)]}}]}
        if "*" not in patterns:
            # Istio paths take a trailing "*" as a prefix match, like the policy's patterns.
            rule["to"] = [{"operation": {"paths": [*patterns, _HEALTH_CHECK_PATH]}}]
        rules.append(rule)
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": _meta(policy, service),
        "spec": {"selector": {"matchLabels": {"app": service}}, "action": "ALLOW", "rules": rules},
    }


def request_authentication(policy: Policy) -> Manifest:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": _meta(policy, "gateway-jwt"),
        "spec": {
            "selector": {"matchLabels": {"app": policy.edge.upstream}},
            "jwtRules": [
                {
                    "issuer": policy.jwt.issuer,
                    "jwksUri": policy.jwt.jwks_uri,
                    "audiences": list(policy.jwt.audiences),
                    # The gateway's own auth interceptor reads the token too.
                    "forwardOriginalToken": True,
                }
            ],
        },
    }


# --------------------------------------------------------------------------- files


def manifest_files(policy: Policy) -> dict[str, list[Manifest]]:
    """File name (under istio/) -> the objects it holds, in apply order."""
    services = list(policy.services)
    return {
        "serviceaccounts.yaml": [service_account(policy, s) for s in services],
        "services.yaml": [kubernetes_service(policy, s) for s in services],
        "deployments.yaml": [deployment(policy, s, v) for s in services for v in policy.services[s].versions],
        "peerauthentication.yaml": [peer_authentication(policy)],
        "authorizationpolicies.yaml": [authorization_policy(policy, s) for s in services],
        "requestauthentication.yaml": [request_authentication(policy)],
        "destinationrules.yaml": [destination_rule(policy, s) for s in services],
        "virtualservices.yaml": [virtual_service(policy, s) for s in services if s != policy.edge.upstream],
        "gateway.yaml": [edge_gateway(policy), edge_virtual_service(policy)],
    }


def kustomization(policy: Policy, files: list[str]) -> Manifest:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": policy.namespace,
        "resources": files,
        # Point this at your registry: `kustomize edit set image agentmesh=REGISTRY/agentmesh:TAG`.
        "images": [{"name": IMAGE, "newTag": "latest"}],
    }
