"""Kubernetes + Istio manifests rendered from the same traffic policy as the Envoy configs.

The Istio side expresses each policy setting in Istio's own vocabulary (VirtualService,
DestinationRule, AuthorizationPolicy, ...); ``tests/mesh/test_parity.py`` reads both outputs
back and checks they carry the same weights, timeouts, retries, breakers and callers.
"""

from __future__ import annotations

import json
from typing import Any

from interceptors.selector import path_match
from mesh.app_auth import service_auth
from mesh.istio_state import postgres_objects, redis_objects, state_env
from mesh.kube import CONTAINER_SECURITY, Manifest, host, meta, pod_security, principal, resources, service_account
from mesh.policy import Policy, Route, Service, proto_duration

IMAGE = "agentmesh"
CONTAINER_PORT_NAME = "grpc-api"
HTTP_PORT_NAME = "http-api"
EDGE_GATEWAY = "agentmesh-edge"
EDGE_TLS_SECRET = "agentmesh-edge-tls"
DATA_DIR = "/var/lib/agentmesh"
# The issuer's public keys, for every service's own token check (created by the operator, see
# istio/README.md: the JWKS is the issuer's, not something the policy can know).
JWKS_CONFIG_MAP = "agentmesh-jwks"
JWKS_DIR = "/etc/agentmesh/jwks"
# The agent's own token (documents.read) for calls to rag on no caller's behalf.
AGENT_TOKEN_SECRET = "agentmesh-agent-token"
AGENT_TOKEN_DIR = "/var/run/secrets/agentmesh/agent-token"
_HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
_RUN_AS = 10001
# With roles, callers reach only the pods that serve; executors keep their probes and no traffic.
SERVING_ROLE = "serve"


# --------------------------------------------------------------------------- Kubernetes


def kubernetes_service(policy: Policy, service: str) -> Manifest:
    spec = policy.services[service]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(policy, service, app=service),
        "spec": {
            "selector": {"app": service} if spec.roles is None else {"app": service, "role": SERVING_ROLE},
            "ports": [
                {
                    "name": CONTAINER_PORT_NAME,
                    "port": spec.port,
                    "targetPort": CONTAINER_PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "grpc",
                },
                *(
                    []
                    if spec.http_port is None
                    else [
                        {
                            "name": HTTP_PORT_NAME,
                            "port": spec.http_port,
                            "targetPort": HTTP_PORT_NAME,
                            "protocol": "TCP",
                            "appProtocol": "http",
                        }
                    ]
                ),
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
        # Behind the ingress gateway's JWT check, every service verifies the forwarded token again.
        {"name": prefix + "AUTH", "value": _json(service_auth(policy, f"{JWKS_DIR}/jwks.json"))},
    ]
    # Plain Kubernetes DNS names: the sidecar intercepts the call and applies the policy.
    endpoints = {
        callee: [f"{host(policy, callee)}:{policy.services[callee].port}"] for callee in policy.callees(service)
    }
    if service == "gateway":
        env.append({"name": prefix + "BACKENDS", "value": json.dumps(endpoints, separators=(",", ":"))})
    http_port = policy.services[service].http_port
    if http_port is not None:
        # MCP and the Agent Card. Where clients reach them (the ingress's host) is the operator's to
        # say in AGENTMESH_GATEWAY_HTTP_PUBLIC_URL (istio/README.md).
        env.append({"name": prefix + "HTTP_PORT", "value": str(http_port)})
    if service == "agent":
        env.append({"name": prefix + "RAG_ENDPOINTS", "value": _json(endpoints["rag"])})
        env.append({"name": prefix + "SERVICE_TOKEN_FILE", "value": f"{AGENT_TOKEN_DIR}/token"})
    return env + state_env(policy, service)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _volumes(service: str) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, mounts): scratch space, the data dir, the issuer's keys, the agent's own token."""
    volumes: list[Manifest] = [
        # Only what a pod can rebuild (rag's index snapshots, the last live config): every state
        # that must survive the pod or agree across replicas is in PostgreSQL or Redis.
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "jwks", "configMap": {"name": JWKS_CONFIG_MAP}},
    ]
    mounts: list[Manifest] = [
        {"name": "cache", "mountPath": DATA_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "jwks", "mountPath": JWKS_DIR, "readOnly": True},
    ]
    if service == "agent":
        # Mounted, not an env var: a rotated token replaces the file, which the agent re-reads.
        volumes.append({"name": "agent-token", "secret": {"secretName": AGENT_TOKEN_SECRET}})
        mounts.append({"name": "agent-token", "mountPath": AGENT_TOKEN_DIR, "readOnly": True})
    return volumes, mounts


def _role_labels(role: str) -> dict[str, str]:
    return {} if role == "all" else {"role": role}


def deployment(policy: Policy, service: str, version: str, role: str = "all") -> Manifest:
    """One version's pods; with the policy's ``roles``, those of one role (``AGENTMESH_AGENT_ROLE``)."""
    spec: Service = policy.services[service]
    volumes, mounts = _volumes(service)
    probe = {"grpc": {"port": spec.port}, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    labels = {"app": service, "version": version, **_role_labels(role)}
    env = _service_env(policy, service)
    if role != "all":
        env.append({"name": f"AGENTMESH_{service.upper()}_ROLE", "value": role})
    name = f"{service}-{version}" if role == "all" else f"{service}-{version}-{role}"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(policy, name, **labels),
        "spec": {
            # State is shared (PostgreSQL, Redis), so any replica serves any request.
            "replicas": spec.pods_per_role()[role],
            # A rollout adds a pod before it removes one: capacity never dips.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": {**labels, "sidecar.istio.io/inject": "true"},
                    # The sidecar's worker threads, as the policy's `proxy` section sets them for Envoy
                    # (0: from the pod's CPU limit).
                    "annotations": {"proxy.istio.io/config": json.dumps({"concurrency": policy.proxy.concurrency})},
                },
                "spec": {
                    "serviceAccountName": service,
                    "automountServiceAccountToken": False,
                    # Longer than the service's own drain (health NOT_SERVING, then grace).
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": pod_security(_RUN_AS),
                    # Replicas on different nodes where there are any: one node lost is not the service.
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": labels},
                        }
                    ],
                    "containers": [
                        {
                            "name": service,
                            "image": f"{IMAGE}:latest",
                            "args": [f"services.{service}"],
                            "ports": [
                                {"name": CONTAINER_PORT_NAME, "containerPort": spec.port, "protocol": "TCP"},
                                *(
                                    []
                                    if spec.http_port is None
                                    else [{"name": HTTP_PORT_NAME, "containerPort": spec.http_port, "protocol": "TCP"}]
                                ),
                            ],
                            "env": env,
                            "readinessProbe": {**probe, "initialDelaySeconds": 2},
                            "livenessProbe": {**probe, "initialDelaySeconds": 10},
                            "resources": resources(spec.resources),
                            "securityContext": CONTAINER_SECURITY,
                            "volumeMounts": mounts,
                        }
                    ],
                    # The root filesystem is read-only: state and scratch space are explicit.
                    "volumes": volumes,
                },
            },
        },
    }


# --------------------------------------------------------------------------- Istio traffic


def _uri_match(pattern: str) -> Manifest:
    return dict(path_match(pattern))


def _destinations(policy: Policy, service: str, *, port_number: int | None = None) -> list[Manifest]:
    spec = policy.services[service]
    port = {"number": port_number or spec.port}
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
        "metadata": meta(policy, service),
        "spec": {"hosts": [host(policy, service)], "http": http_routes(policy, service)},
    }


def edge_gateway(policy: Policy) -> Manifest:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": meta(policy, EDGE_GATEWAY),
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


def edge_http_routes(policy: Policy) -> list[Manifest]:
    """The edge's routes for the upstream's HTTP side (MCP, the Agent Card): exact paths, first."""
    upstream = policy.edge.upstream
    destinations = _destinations(policy, upstream, port_number=policy.services[upstream].http_port)
    return [
        {
            "name": f"http{route.path.replace('/', '-')}",
            "match": [{"uri": {"exact": route.path}}],
            "route": destinations,
            "timeout": proto_duration(route.timeout),
            "retries": {"attempts": 0},  # Istio retries twice by default; a tool call is not replayed
        }
        for route in policy.edge.http_routes
    ]


def edge_virtual_service(policy: Policy) -> Manifest:
    upstream = policy.edge.upstream
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": meta(policy, EDGE_GATEWAY),
        "spec": {
            "hosts": list(policy.edge.hosts),
            "gateways": [EDGE_GATEWAY],
            "http": [
                {**route, "headers": {"request": {"remove": [policy.fault_header]}}}
                for route in [*edge_http_routes(policy), *http_routes(policy, upstream)]
            ],
        },
    }


def destination_rule(policy: Policy, service: str) -> Manifest:
    spec = policy.services[service]
    pool, outliers = spec.connection_pool, spec.outlier_detection
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": meta(policy, service),
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


def disruption_budget(policy: Policy, service: str, role: str = "all") -> Manifest:
    """A drain or upgrade takes at most one of a service's pods (any version; per role) at a time.

    Split by role, each role keeps its own budget: serving and executing capacity are separate,
    and Kubernetes refuses to evict a pod that more than one budget selects.
    """
    labels = {"app": service, **_role_labels(role)}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(policy, service if role == "all" else f"{service}-{role}", **labels),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
    }


def peer_authentication(policy: Policy) -> Manifest:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": meta(policy, "default"),
        "spec": {"mtls": {"mode": "STRICT"}},
    }


def authorization_policy(policy: Policy, service: str) -> Manifest:
    rules: list[Manifest] = []
    for caller, patterns in policy.services[service].callers.items():
        rule: Manifest = {"from": [{"source": {"principals": [principal(policy, caller)]}}]}
        if "*" not in patterns:
            # Istio paths take a trailing "*" as a prefix match, like the policy's patterns.
            paths = [*patterns, _HEALTH_CHECK_PATH]
            if caller == "edge" and service == policy.edge.upstream:
                paths += [route.path for route in policy.edge.http_routes]
            rule["to"] = [{"operation": {"paths": paths}}]
        rules.append(rule)
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta(policy, service),
        "spec": {"selector": {"matchLabels": {"app": service}}, "action": "ALLOW", "rules": rules},
    }


def require_jwt(policy: Policy) -> Manifest:
    """A call to the gateway without a token from the policy's issuer is denied, bar the public methods.

    RequestAuthentication alone rejects only tokens that are present and bad; with no token
    there is no request principal, and this policy turns that into a refusal at the gateway's
    sidecar (403), before the app sees the call.
    """
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta(policy, f"{policy.edge.upstream}-require-jwt"),
        "spec": {
            "selector": {"matchLabels": {"app": policy.edge.upstream}},
            "action": "DENY",
            "rules": [
                {
                    "from": [{"source": {"notRequestPrincipals": [f"{policy.jwt.issuer}/*"]}}],
                    "to": [{"operation": {"notPaths": [*policy.jwt.public_methods, *_public_http_paths(policy)]}}],
                }
            ],
        },
    }


def _public_http_paths(policy: Policy) -> list[str]:
    return [route.path for route in policy.edge.http_routes if route.public]


def request_authentication(policy: Policy) -> Manifest:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": meta(policy, "gateway-jwt"),
        "spec": {
            "selector": {"matchLabels": {"app": policy.edge.upstream}},
            "jwtRules": [
                {
                    "issuer": policy.jwt.issuer,
                    "jwksUri": policy.jwt.jwks_uri,
                    "audiences": [policy.jwt.audience],
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
        # The stores first: the services wait for them at start, but need not wait long.
        "postgres.yaml": postgres_objects(policy),
        "redis.yaml": redis_objects(policy),
        "deployments.yaml": [
            deployment(policy, s, v, role)
            for s in services
            for v in policy.services[s].versions
            for role in policy.services[s].pods_per_role()
        ],
        "poddisruptionbudgets.yaml": [
            disruption_budget(policy, s, role) for s in services for role in policy.services[s].pods_per_role()
        ],
        "peerauthentication.yaml": [peer_authentication(policy)],
        "authorizationpolicies.yaml": [authorization_policy(policy, s) for s in services] + [require_jwt(policy)],
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
