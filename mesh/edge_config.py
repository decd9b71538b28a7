"""The edge proxy's Envoy bootstrap: TLS for outside clients, JWT checks, gRPC-JSON transcoding.

Its upstream side is exactly a sidecar's outbound listener to the gateway, built from the same
pieces (``mesh.envoy_config``); what is the edge's own lives here: the token check and how a
refusal is answered (401 / UNAUTHENTICATED in the caller's terms), reading an HTTP/JSON request
whole before answering, transcoding, and the routes to the gateway's HTTP side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mesh.certs import CertPaths
from mesh.envoy_config import (
    TLS_SOCKET,
    Address,
    Config,
    admin_config,
    callee_clusters,
    fault_filter,
    http_connection_manager,
    outbound_routes,
    path_match_config,
    socket_address,
    split_action,
    tls_certificates,
    typed,
)
from mesh.policy import Policy, parse_duration, proto_duration

JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_PROVIDER = "agentmesh"
# Where jwt_authn records why it refused a token (read by the edge's local-reply mapper).
JWT_FAILURE_KEY = "jwt_failure"
UNAUTHENTICATED = 16  # the gRPC status code
# The services' own message limit (ServiceSettings.max_message_bytes): a bigger JSON body could
# not become one gRPC message anyway.
MAX_HTTP_REQUEST_BYTES = 4 * 1024 * 1024


def edge_http_routes(policy: Policy) -> list[Config]:
    """The edge's routes for the upstream's HTTP side: exact paths, ahead of the gRPC routes."""
    target = split_action(policy, policy.edge.upstream)
    return [
        {
            "name": f"http{route.path.replace('/', '-')}",
            "match": {"path": route.path},
            # As the gRPC routes: the limit is the stream's duration, the router's own timeout off.
            "route": {
                **target,
                "timeout": "0s",
                "max_stream_duration": {"max_stream_duration": proto_duration(route.timeout)},
            },
        }
        for route in policy.edge.http_routes
    ]


def _jwt_authn_filter(policy: Policy, jwks_file: Path) -> Config:
    """Every routed method needs a valid token from the policy's issuer, bar its public methods.

    It runs before the transcoder: a call without a valid token is refused before anything is
    transcoded, and the local-reply mappers still see the caller's own content type (HTTP/JSON or
    gRPC) to answer in its terms. Public methods are gRPC paths; no HTTP route maps onto them, so
    every HTTP/JSON route needs a token.
    """
    public = [{"match": path_match_config(pattern)} for pattern in policy.jwt.public_methods]
    public += [{"match": {"path": route.path}} for route in policy.edge.http_routes if route.public]
    return {
        "name": JWT_FILTER,
        "typed_config": typed(
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            providers={
                JWT_PROVIDER: {
                    "issuer": policy.jwt.issuer,
                    "audiences": [policy.jwt.audience],
                    # Read at start: a rotated key set needs an edge restart (or the remote_jwks of
                    # a real issuer, which Istio's RequestAuthentication uses).
                    "local_jwks": {"filename": str(jwks_file)},
                    "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                    # The services verify the same token again (defence in depth): keep it.
                    "forward": True,
                    "require_expiration": True,
                    "clock_skew_seconds": int(parse_duration(policy.jwt.clock_skew).total_seconds()),
                    "failed_status_in_metadata": JWT_FAILURE_KEY,
                }
            },
            # First match wins: the public methods, then everything else.
            rules=[*public, {"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}}],
        ),
    }


def _whole_http_request() -> Config:
    """HTTP/JSON requests are read to their end before the token check answers.

    Otherwise a refusal goes out while the client is still sending its body, and Envoy ends the
    HTTP/2 stream with RST_STREAM(NO_ERROR), which some clients (curl 7.x) report as a framing
    error instead of the 401. gRPC calls skip this: they may stream, and gRPC clients read an
    early status fine. The transcoder buffers a unary JSON body anyway.
    """
    return {
        "name": "http-request-buffer",
        "typed_config": typed(
            "envoy.extensions.common.matching.v3.ExtensionWithMatcher",
            extension_config={
                "name": "envoy.filters.http.buffer",
                "typed_config": typed(
                    "envoy.extensions.filters.http.buffer.v3.Buffer", max_request_bytes=MAX_HTTP_REQUEST_BYTES
                ),
            },
            xds_matcher={
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": {
                                "single_predicate": {
                                    "input": {
                                        "name": "content-type",
                                        "typed_config": typed(
                                            "envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
                                            header_name="content-type",
                                        ),
                                    },
                                    "value_match": {"prefix": "application/grpc"},
                                }
                            },
                            "on_match": {
                                "action": {
                                    "name": "skip",
                                    "typed_config": typed(
                                        "envoy.extensions.filters.common.matcher.action.v3.SkipFilter"
                                    ),
                                }
                            },
                        }
                    ]
                }
            },
        ),
    }


def _jwt_local_replies(policy: Policy) -> Config:
    """How the edge answers a refused token: 401, i.e. UNAUTHENTICATED, for every reason.

    jwt_authn answers a token for another audience with 403; to a caller that is a bad token like
    any other (RFC 6750 ``invalid_token``), and the services answer it UNAUTHENTICATED too.
    HTTP/JSON callers get the body the transcoder gives every other error (a google.rpc.Status
    as JSON); gRPC callers get the status and Envoy's reason as grpc-message.
    """
    refused_token = {
        "metadata_filter": {
            "matcher": {"filter": JWT_FILTER, "path": [{"key": JWT_FAILURE_KEY}], "value": {"present_match": True}},
            "match_if_key_not_found": False,
        }
    }
    grpc_caller = {
        "header_filter": {
            "header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}},
        }
    }
    http_caller = {
        "header_filter": {
            "header": {
                "name": "content-type",
                "string_match": {"prefix": "application/grpc"},
                "invert_match": True,
                # A GET carries no content type: it is an HTTP caller too.
                "treat_missing_header_as_empty": True,
            },
        }
    }
    # Envoy's reason ("Jwt is expired"), then what to do about it.
    message = (
        f"%LOCAL_REPLY_BODY%: send 'authorization: Bearer <token>' with a token from {policy.jwt.issuer}"
        f" for audience {policy.jwt.audience}"
    )
    return {
        "mappers": [
            {
                "filter": {"and_filter": {"filters": [refused_token, http_caller]}},
                "status_code": 401,
                "body_format_override": {
                    "json_format": {"code": UNAUTHENTICATED, "message": message},
                    "content_type": "application/json",
                },
            },
            {
                "filter": {"and_filter": {"filters": [refused_token, grpc_caller]}},
                "status_code": 401,
                "body_format_override": {"text_format_source": {"inline_string": message}},
            },
        ]
    }


def edge_bootstrap(
    policy: Policy,
    *,
    listen: Address,
    admin_port: int,
    upstreams: Mapping[str, Sequence[Address]],
    certs: CertPaths,
    descriptor_set: Path | None,
    jwks_file: Path,
) -> Config:
    """The edge proxy: TLS for outside clients, gRPC-JSON transcoding, JWT checks, then the gateway over mTLS.

    ``upstreams`` maps the gateway's versions to its sidecars' inbound addresses.
    ``descriptor_set`` is the ``protoc --include_imports`` output; without it, gRPC only.
    ``jwks_file`` holds the issuer's public keys.
    """
    gateway = policy.edge.upstream
    http_filters: list[Config] = [_whole_http_request(), _jwt_authn_filter(policy, jwks_file)]
    if descriptor_set is not None:
        http_filters.append(
            {
                "name": "envoy.filters.http.grpc_json_transcoder",
                "typed_config": typed(
                    "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
                    proto_descriptor=str(descriptor_set),
                    services=list(policy.edge.transcode),
                    print_options={
                        "always_print_primitive_fields": True,
                        "preserve_proto_field_names": False,
                    },
                    # gRPC errors become the mapped HTTP status with a google.rpc.Status JSON body.
                    convert_grpc_status=True,
                    request_validation_options={"reject_unknown_method": False},
                ),
            }
        )
    listener = {
        "name": "edge",
        "address": socket_address(listen),
        "filter_chains": [
            {
                "transport_socket": {
                    "name": TLS_SOCKET,
                    "typed_config": typed(
                        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        common_tls_context={
                            "tls_certificates": tls_certificates(certs),
                            "alpn_protocols": ["h2", "http/1.1"],
                        },
                    ),
                },
                "filters": [
                    http_connection_manager(
                        policy,
                        stat_prefix="edge",
                        codec="AUTO",
                        routes=[*edge_http_routes(policy), *outbound_routes(policy, gateway)],
                        http_filters=[*http_filters, fault_filter()],
                        use_remote_address=True,
                        local_reply_config=_jwt_local_replies(policy),
                        # Outsiders may not trigger faults or spoof a client certificate.
                        route_config_extra={
                            "request_headers_to_remove": [policy.fault_header, "x-forwarded-client-cert"]
                        },
                    )
                ],
            }
        ],
    }
    return {
        "node": {"id": "edge", "cluster": "edge"},
        "admin": admin_config(admin_port),
        "static_resources": {
            "listeners": [listener],
            "clusters": callee_clusters(policy, gateway, upstreams, certs),
        },
    }
