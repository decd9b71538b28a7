"""The gateway's HTTP side: MCP at ``/mcp`` (and the routes other modules mount beside it), served by
uvicorn inside the gateway's own process and lifespan.

It opens once the gRPC port listens (a ``Lifespan.on_started`` hook: the MCP tools call that port
over loopback), stops taking requests when a drain begins and closes with the rest of the gateway.
Bearer tokens are checked at the door as the MCP authorization spec asks (no token or a bad one:
401 with ``WWW-Authenticate: Bearer``), by the same verifier settings as the gRPC side, which then
checks them again per method with their scopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path

import grpc.aio
import structlog
import uvicorn
from google.protobuf import descriptor_pb2, descriptor_pool
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import BaseRoute, Route

from interceptors.auth import resolve_access
from interceptors.jwks import TokenRejected, TokenVerifier
from runtime.lifespan import Lifespan
from runtime.security import AuthSettings, token_verifier
from runtime.settings_errors import InvalidSetting, env_name
from services.gateway.config import GatewaySettings
from services.gateway.mcp_endpoint import McpEndpoint
from services.gateway.mcp_tools import GrpcTool, build_tools

log = structlog.get_logger(__name__)

MCP_PATH = "/mcp"
# Where A2A clients look for an agent's card (A2A spec, Agent Discovery); served once mounted.
AGENT_CARD_PATH = "/.well-known/agent-card.json"


class JwtTokenVerifier:
    """The mesh's JWT verifier in the shape the MCP SDK's bearer middleware asks for."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            verified = self._verifier.verify(token)
        except TokenRejected as rejected:
            log.info("MCP request with a rejected token", reason=rejected.reason)
            return None
        return AccessToken(
            token=token,
            client_id=verified.subject,
            subject=verified.subject,
            scopes=sorted(verified.scopes),
            expires_at=int(verified.expires_at),
        )


def mcp_tools(settings: GatewaySettings, pool: descriptor_pool.DescriptorPool, routed: set[str]) -> dict[str, GrpcTool]:
    """The tools the settings name, checked against the descriptor set (a bad name stops the start)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(Path(settings.descriptor_set).read_bytes()).file
    try:
        return build_tools(settings.mcp_tools, pool=pool, files=files, routed=routed)
    except ValueError as error:
        raise InvalidSetting(f"{env_name(type(settings), 'mcp_tools')}: {error}") from None


def http_app(
    endpoint: McpEndpoint,
    *,
    auth: AuthSettings | None,
    origin: str,
    scopes: Sequence[str] = (),
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The HTTP side's app: MCP at ``origin`` + /mcp, then ``routes`` (the Agent Card's, for one).

    With auth on, the MCP authorization spec's parts: a token at the door (401 with a
    ``WWW-Authenticate: Bearer`` challenge naming the resource metadata), and the OAuth protected
    resource metadata (RFC 9728) naming the token issuer and the ``scopes`` the tools need.
    """
    if auth is None:
        return Starlette(routes=[Route(MCP_PATH, endpoint.app), *routes])
    resource = AnyHttpUrl(origin + MCP_PATH)
    backend = BearerAuthBackend(JwtTokenVerifier(token_verifier(auth)))
    # Any valid token opens the door; what it may call is the gRPC side's per-method scope check.
    guarded = RequireAuthMiddleware(endpoint.app, [], resource_metadata_url=build_resource_metadata_url(resource))
    metadata = create_protected_resource_routes(
        resource, authorization_servers=[AnyHttpUrl(auth.issuer)], scopes_supported=sorted(scopes)
    )
    return Starlette(
        routes=[Route(MCP_PATH, guarded), *metadata, *routes],
        middleware=[Middleware(AuthenticationMiddleware, backend=backend), Middleware(AuthContextMiddleware)],
    )


def tool_scopes(auth: AuthSettings | None, tools: Mapping[str, GrpcTool]) -> list[str]:
    """The scopes a token needs for every tool (the gRPC side's table, per tool method)."""
    if auth is None:
        return []
    policy = auth.policy()
    return sorted({scope for tool in tools.values() for scope in resolve_access(policy, tool.path).scopes})


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the gateway's bootstrap owns SIGTERM/SIGINT and drains
    this server with the rest."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve_http_entry(
    life: Lifespan,
    settings: GatewaySettings,
    tools: dict[str, GrpcTool],
    *,
    routes: Sequence[BaseRoute] = (),
) -> None:
    """Serve the HTTP side on ``settings.host:settings.http_port`` once the gRPC port listens."""

    async def start(grpc_port: int) -> None:
        # The stateless transport logs every request's end at INFO; the gRPC access log has each call.
        logging.getLogger("mcp.server.streamable_http").setLevel(logging.WARNING)
        # The gateway's own port, whatever interface it listens on.
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
        limits = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
        ]
        channel = grpc.aio.insecure_channel(f"{host}:{grpc_port}", options=limits)
        life.on_close(partial(channel.close, None), name="mcp loopback channel")
        endpoint = McpEndpoint(tools, gateway=channel, timeout_s=settings.default_deadline_s)
        sock = _listen(settings)
        app = http_app(
            endpoint,
            auth=settings.auth,
            origin=settings.http_origin,
            scopes=tool_scopes(settings.auth, tools),
            routes=routes,
        )
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=math.ceil(settings.grace_period_s),
        )
        server = _Uvicorn(config)
        served = asyncio.Event()

        async def serve() -> None:
            try:
                # The MCP session manager's task group lives in this task (anyio scopes end where they began).
                async with endpoint.running():
                    await server.serve(sockets=[sock])
            finally:
                served.set()

        life.on_close(_closer(sock.close), name="http entry socket")
        life.supervise("http entry", serve, on_crash="stop")

        async def stop_taking_requests() -> None:
            server.should_exit = True

        async def stopped() -> None:
            # In-flight requests finish (up to the grace period), then uvicorn returns.
            server.should_exit = True
            await served.wait()

        life.on_drain(stop_taking_requests)
        life.on_close(stopped, name="http entry")
        log.info(
            "HTTP entry serving",
            address=f"{settings.host}:{settings.http_port}",
            mcp=settings.http_origin + MCP_PATH,
            tools=sorted(tools),
        )

    life.on_started(start)


def _closer(close: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def closed() -> None:
        close()

    return closed


def _listen(settings: GatewaySettings) -> socket.socket:
    family = socket.getaddrinfo(settings.host or None, settings.http_port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.processes > 1:
        # Every process serves the port, as with the gRPC one (runtime/processes.py): any answers any
        # request, since the endpoint keeps no session.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((settings.host, settings.http_port))
    except OSError as error:
        sock.close()
        host, port = env_name(type(settings), "host"), env_name(type(settings), "http_port")
        raise InvalidSetting(
            f"{host}, {port}: cannot listen on {settings.host}:{settings.http_port}: {error}"
        ) from None
    sock.listen(128)
    return sock
