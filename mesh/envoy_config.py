"""Envoy bootstrap configs (v3 API, static resources) rendered from the traffic policy.

Two shapes, both built from the same pieces (the edge's own parts are in ``mesh.edge_config``):

* a **sidecar** per service instance: an mTLS inbound listener that admits only the callers
  the policy names (by SPIFFE SAN, then per gRPC method with RBAC) in front of the plaintext
  app, plus one plaintext loopback outbound listener per service the instance may call, where
  the caller-side policy lives (routes, canary split, timeouts, retries, faults, circuit
  breakers, outlier detection, active gRPC health checks) and every upstream hop is mTLS;
* the **edge**: a TLS listener for outside clients (gRPC and, through gRPC-JSON transcoding,
  HTTP/JSON) that refuses any call without a valid JWT (bar the policy's public methods) and
  whose upstream side is exactly an outbound listener to the gateway.

Where things listen is passed in (a ``Topology``-like set of arguments), so tests render the
same policy onto free loopback ports and ``make run MESH=envoy`` onto the fixed local layout.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from interceptors.selector import path_match
from mesh.certs import CertPaths
from mesh.policy import GRPC_CODE_NUMBERS, Fault, Policy, Proxy, Route, Service, proto_duration

Config = dict[str, Any]

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
TLS_SOCKET = "envoy.transport_sockets.tls"
LOCAL_APP_HTTP = "local_app_http"
_TYPE = "type.googleapis.com/"


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int


def socket_address(address: Address) -> Config:
    return {"socket_address": {"address": address.host, "port_value": address.port}}


def typed(type_name: str, **fields: Any) -> Config:
    return {"@type": _TYPE + type_name, **fields}


def tls_certificates(certs: CertPaths) -> list[Config]:
    return [{"certificate_chain": {"filename": str(certs.cert)}, "private_key": {"filename": str(certs.key)}}]


def _san_matchers(spiffe_ids: Sequence[str]) -> list[Config]:
    return [{"san_type": "URI", "matcher": {"exact": spiffe_id}} for spiffe_id in spiffe_ids]


def admin_config(port: int) -> Config:
    return {"address": socket_address(Address("127.0.0.1", port))}


# --------------------------------------------------------------------------- routes


def _path_string_match(pattern: str) -> Config:
    """A method pattern as a StringMatcher on the gRPC path."""
    return dict(path_match(pattern))


def path_match_config(pattern: str) -> Config:
    """A method pattern as a RouteMatch path specifier."""
    matcher = _path_string_match(pattern)
    return {"path": matcher["exact"]} if "exact" in matcher else matcher


def cluster_name(service: str, version: str) -> str:
    return f"{service}_{version}"


def split_action(policy: Policy, callee: str) -> Config:
    """Where a request for ``callee`` goes when no header pins a version."""
    service = policy.services[callee]
    if service.canary is None:
        return {"cluster": cluster_name(callee, service.versions[0])}
    return {
        "weighted_clusters": {
            "clusters": [
                {"name": cluster_name(callee, version), "weight": weight}
                for version, weight in service.canary.weights.items()
            ]
        }
    }


def _route_action(target: Config, route: Route) -> Config:
    action: Config = {
        **target,
        # The route's limit is enforced as a stream duration, so callers get DEADLINE_EXCEEDED
        # (the router's own timeout answers HTTP 504, i.e. UNAVAILABLE) and a caller's
        # shorter grpc-timeout wins. "0s" turns the router's default 15 s timeout off.
        "timeout": "0s",
        "max_stream_duration": {
            "max_stream_duration": proto_duration(route.timeout),
            "grpc_timeout_header_max": proto_duration(route.timeout),
        },
    }
    if route.retries is not None:
        action["retry_policy"] = {
            "retry_on": ",".join(route.retries.retry_on),
            "num_retries": route.retries.attempts,
            "per_try_timeout": proto_duration(route.retries.per_try_timeout),
            # Retry on another instance where there is one.
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": typed("envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"),
                }
            ],
            "host_selection_retry_max_attempts": 3,
        }
    return action


def _fault_config(fault: Fault) -> Config:
    hundred_percent = {"numerator": 100, "denominator": "HUNDRED"}
    config = typed("envoy.extensions.filters.http.fault.v3.HTTPFault")
    if fault.delay is not None:
        config["delay"] = {"fixed_delay": proto_duration(fault.delay), "percentage": hundred_percent}
    if fault.abort is not None:
        config["abort"] = {"grpc_status": GRPC_CODE_NUMBERS[fault.abort], "percentage": hundred_percent}
    return config


def outbound_routes(policy: Policy, callee: str) -> list[Config]:
    """The caller-side route table for ``callee``: faults, then per-method rules with the canary."""
    service = policy.services[callee]
    routes: list[Config] = []
    catch_all = service.routes[-1]
    for fault in policy.faults_for(callee):
        routes.append(
            {
                "name": f"fault-{fault.name}",
                "match": {
                    "prefix": "/",
                    "headers": [{"name": policy.fault_header, "string_match": {"exact": fault.name}}],
                },
                "route": _route_action(split_action(policy, callee), catch_all.model_copy(update={"retries": None})),
                "typed_per_filter_config": {"envoy.filters.http.fault": _fault_config(fault)},
            }
        )
    for index, route in enumerate(service.routes):
        for pattern in route.methods:
            name = f"{callee}-{index}-{pattern.strip('/').replace('/', '-').replace('*', 'all')}"
            if service.canary is not None:
                canary = service.canary
                routes.append(
                    {
                        "name": f"{name}-pinned-{canary.version}",
                        "match": {
                            **path_match_config(pattern),
                            "headers": [{"name": canary.header, "string_match": {"exact": canary.value}}],
                        },
                        "route": _route_action({"cluster": cluster_name(callee, canary.version)}, route),
                    }
                )
            routes.append(
                {
                    "name": name,
                    "match": path_match_config(pattern),
                    "route": _route_action(split_action(policy, callee), route),
                }
            )
    return routes


# --------------------------------------------------------------------------- clusters


def _http2_options() -> Config:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": {}},
        )
    }


def _discovery_type(endpoints: Sequence[Address]) -> str:
    try:
        for endpoint in endpoints:
            ipaddress.ip_address(endpoint.host)
    except ValueError:
        return "STRICT_DNS"
    return "STATIC"


def _load_assignment(name: str, endpoints: Sequence[Address]) -> Config:
    return {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(e)}} for e in endpoints]}],
    }


def upstream_cluster(
    policy: Policy, *, callee: str, version: str, endpoints: Sequence[Address], client_certs: CertPaths
) -> Config:
    """One version of ``callee`` as seen from a caller: mTLS, breakers, outlier detection, health checks."""
    service: Service = policy.services[callee]
    name = cluster_name(callee, version)
    pool, outliers, health = service.connection_pool, service.outlier_detection, service.health_check
    return {
        "name": name,
        "type": _discovery_type(endpoints),
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "typed_extension_protocol_options": _http2_options(),
        "load_assignment": _load_assignment(name, endpoints),
        "transport_socket": {
            "name": TLS_SOCKET,
            "typed_config": typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                common_tls_context={
                    "tls_certificates": tls_certificates(client_certs),
                    "validation_context": {
                        "trusted_ca": {"filename": str(client_certs.ca)},
                        # The callee must prove it is the service we meant to reach.
                        "match_typed_subject_alt_names": _san_matchers([policy.spiffe_id(callee)]),
                    },
                    "alpn_protocols": ["h2"],
                },
            ),
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": pool.max_connections,
                    "max_pending_requests": pool.max_pending_requests,
                    "max_requests": pool.max_requests,
                    "max_retries": pool.max_retries,
                }
            ]
        },
        "outlier_detection": {
            # For gRPC the router reports grpc-status mapped to HTTP (INTERNAL -> 500, UNAVAILABLE -> 503).
            "consecutive_5xx": outliers.consecutive_errors,
            "interval": proto_duration(outliers.interval),
            "base_ejection_time": proto_duration(outliers.base_ejection_time),
            "max_ejection_percent": outliers.max_ejection_percent,
        },
        "health_checks": [
            {
                "timeout": proto_duration(health.timeout),
                "interval": proto_duration(health.interval),
                # Idle clusters are otherwise probed only once a minute.
                "no_traffic_interval": proto_duration(health.interval),
                "unhealthy_threshold": health.unhealthy_threshold,
                "healthy_threshold": health.healthy_threshold,
                "grpc_health_check": {},
            }
        ],
    }


def _local_app_cluster(app: Address) -> Config:
    return {
        "name": "local_app",
        "type": _discovery_type([app]),
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _http2_options(),
        "load_assignment": _load_assignment("local_app", [app]),
    }


def _local_app_http_cluster(app_http: Address) -> Config:
    """The app's HTTP side (MCP, the Agent Card): HTTP/1.1, as uvicorn serves it."""
    return {
        "name": LOCAL_APP_HTTP,
        "type": _discovery_type([app_http]),
        "connect_timeout": "1s",
        "load_assignment": _load_assignment(LOCAL_APP_HTTP, [app_http]),
    }


# --------------------------------------------------------------------------- listeners


def _router_filter(proxy: Proxy) -> Config:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": typed(
            "envoy.extensions.filters.http.router.v3.Router",
            dynamic_stats=proxy.dynamic_stats,
            suppress_envoy_headers=proxy.suppress_envoy_headers,
        ),
    }


def http_connection_manager(
    policy: Policy, *, stat_prefix: str, codec: str, routes: list[Config], http_filters: list[Config], **extra: Any
) -> Config:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": typed(
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            stat_prefix=stat_prefix,
            codec_type=codec,
            route_config={
                "name": stat_prefix,
                "virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}],
                **extra.pop("route_config_extra", {}),
            },
            http_filters=[*http_filters, _router_filter(policy.proxy)],
            generate_request_id=policy.proxy.generate_request_id,
            **extra,
        ),
    }


def _rbac_filter(policy: Policy, service: str) -> Config:
    """Per-method allow list: who may call which gRPC path; health checks are open to every caller."""
    policies: Config = {}
    for caller, patterns in policy.services[service].callers.items():
        if "*" in patterns:
            permissions: list[Config] = [{"any": True}]
        else:
            paths = [_path_string_match(p) for p in [*patterns, HEALTH_CHECK_PATH]]
            if caller == "edge" and service == policy.edge.upstream:
                paths += [{"exact": route.path} for route in policy.edge.http_routes]
            permissions = [{"url_path": {"path": m}} for m in paths]
        policies[caller] = {
            "permissions": [{"or_rules": {"rules": permissions}}],
            "principals": [{"authenticated": {"principal_name": {"exact": policy.spiffe_id(caller)}}}],
        }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": typed(
            "envoy.extensions.filters.http.rbac.v3.RBAC", rules={"action": "ALLOW", "policies": policies}
        ),
    }


def _inbound_listener(
    policy: Policy, service: str, *, address: Address, certs: CertPaths, app_http: Address | None = None
) -> Config:
    callers = list(policy.services[service].callers)
    # The caller's sidecar owns timeouts; the inbound hop adds none of its own.
    routes: list[Config] = []
    if app_http is not None:
        routes += [
            {"match": {"path": route.path}, "route": {"cluster": LOCAL_APP_HTTP, "timeout": "0s"}}
            for route in policy.edge.http_routes
        ]
    routes.append({"match": {"prefix": "/"}, "route": {"cluster": "local_app", "timeout": "0s"}})
    return {
        "name": "inbound",
        "address": socket_address(address),
        "filter_chains": [
            {
                "transport_socket": {
                    "name": TLS_SOCKET,
                    "typed_config": typed(
                        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        require_client_certificate=True,
                        common_tls_context={
                            "tls_certificates": tls_certificates(certs),
                            "validation_context": {
                                "trusted_ca": {"filename": str(certs.ca)},
                                # Unknown identities are refused during the handshake;
                                # RBAC below then narrows known ones to their methods.
                                "match_typed_subject_alt_names": _san_matchers([policy.spiffe_id(c) for c in callers]),
                            },
                            "alpn_protocols": ["h2"],
                        },
                    ),
                },
                "filters": [
                    http_connection_manager(
                        policy,
                        stat_prefix="inbound",
                        codec="HTTP2",
                        routes=routes,
                        http_filters=[_rbac_filter(policy, service)],
                        # Identity comes from the verified certificate, never from a header.
                        forward_client_cert_details="SANITIZE_SET",
                        set_current_client_cert_details={"uri": True},
                    )
                ],
            }
        ],
    }


def fault_filter() -> Config:
    # Configured per route (see outbound_routes); inert on routes without a fault.
    return {
        "name": "envoy.filters.http.fault",
        "typed_config": typed("envoy.extensions.filters.http.fault.v3.HTTPFault"),
    }


def _outbound_listener(policy: Policy, callee: str, *, address: Address) -> Config:
    return {
        "name": f"outbound_{callee}",
        "address": socket_address(address),
        "filter_chains": [
            {
                "filters": [
                    http_connection_manager(
                        policy,
                        stat_prefix=f"outbound_{callee}",
                        codec="HTTP2",
                        routes=outbound_routes(policy, callee),
                        http_filters=[fault_filter()],
                    )
                ]
            }
        ],
    }


# --------------------------------------------------------------------------- bootstraps


def sidecar_bootstrap(
    policy: Policy,
    *,
    service: str,
    version: str,
    app: Address,
    inbound: Address,
    admin_port: int,
    outbound_ports: Mapping[str, int],
    upstreams: Mapping[str, Mapping[str, Sequence[Address]]],
    certs: CertPaths,
    app_http: Address | None = None,
) -> Config:
    """The sidecar for one instance of ``service``.

    ``upstreams`` maps each callee to its versions' endpoints (their sidecars' inbound
    addresses); ``outbound_ports`` says where the app reaches each callee on loopback;
    ``app_http`` is the app's HTTP side, where the edge's ``http_routes`` go.
    """
    callees = policy.callees(service)
    missing = [c for c in callees if c not in outbound_ports or c not in upstreams]
    if missing:
        raise ValueError(f"{service} may call {missing} but no outbound port or upstream was given")
    listeners = [_inbound_listener(policy, service, address=inbound, certs=certs, app_http=app_http)]
    clusters = [_local_app_cluster(app)]
    if app_http is not None:
        clusters.append(_local_app_http_cluster(app_http))
    for callee in callees:
        listeners.append(_outbound_listener(policy, callee, address=Address("127.0.0.1", outbound_ports[callee])))
        clusters += callee_clusters(policy, callee, upstreams[callee], certs)
    return {
        "node": {"id": f"{service}-{version}", "cluster": service},
        "admin": admin_config(admin_port),
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def callee_clusters(
    policy: Policy, callee: str, versions: Mapping[str, Sequence[Address]], certs: CertPaths
) -> list[Config]:
    wanted = policy.services[callee].versions
    if set(versions) != set(wanted):
        raise ValueError(f"{callee} needs endpoints for versions {wanted}, got {sorted(versions)}")
    return [
        upstream_cluster(policy, callee=callee, version=v, endpoints=versions[v], client_certs=certs) for v in wanted
    ]
