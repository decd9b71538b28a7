"""A Consul agent **test double**: the slice of Consul's HTTP API that agentmesh uses.

This is not Consul. It is an in-process aiohttp server that answers the endpoints below
with Consul's own JSON shapes, status codes, headers and semantics, so that the project's
code (py-consul's ``consul.aio`` client) is exercised exactly as against a real agent.
Every test that uses it also runs against a real agent when ``CONSUL_HTTP_ADDR`` is set.

Endpoints, each following the Consul API documentation page named beside it:

- ``PUT /v1/agent/service/register``, ``PUT /v1/agent/service/deregister/:id``,
  ``GET /v1/agent/services``, ``GET /v1/agent/service/:id``
  https://developer.hashicorp.com/consul/api-docs/agent/service
- ``PUT /v1/agent/check/register``, ``PUT /v1/agent/check/deregister/:id``, ``GET /v1/agent/checks``,
  ``PUT /v1/agent/check/{pass,warn,fail}/:id``, ``PUT /v1/agent/check/update/:id``
  https://developer.hashicorp.com/consul/api-docs/agent/check
- ``GET /v1/health/service/:service`` (``passing``, ``tag``)
  https://developer.hashicorp.com/consul/api-docs/health#list-service-instances-for-service
- ``GET /v1/catalog/services``
  https://developer.hashicorp.com/consul/api-docs/catalog#list-services
- ``GET|PUT|DELETE /v1/kv/:key`` (``recurse``, ``keys``, ``raw``, ``cas``, ``flags``)
  https://developer.hashicorp.com/consul/api-docs/kv
- Blocking queries (``index``, ``wait``, ``X-Consul-Index``) on the health, catalog and KV reads
  https://developer.hashicorp.com/consul/api-docs/features/blocking
- ``GET /v1/status/leader`` https://developer.hashicorp.com/consul/api-docs/status

Health checks really run, on Consul's rules
(https://developer.hashicorp.com/consul/docs/services/usage/checks):
a new check starts ``critical`` unless ``Status`` says otherwise; gRPC checks call
``grpc.health.v1.Health/Check`` on ``GRPC`` (``host:port`` or ``host:port/service``) every
``Interval`` after a random first stagger, over TLS when ``GRPCUseTLS``, and count
``SuccessBeforePassing`` / ``FailuresBeforeCritical``; an ``Interval`` under one second is
raised to one second; TTL checks go ``critical`` with output
"TTL expired" when not refreshed within ``TTL``; a service whose check stays critical longer than
``DeregisterCriticalServiceAfter`` is reaped. Consul enforces a one-minute minimum for that and
reaps every 30 s. Those three timings are constructor options here (Consul's values by default)
so that tests need not wait minutes.

Request bodies are decoded like Consul's: field names case-insensitively, snake_case accepted.
Not modelled: ACLs, sessions and locks, datacenters other than the local one, anti-entropy
with servers (the catalog *is* this agent), filter expressions.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
_STATUSES = (PASSING, WARNING, CRITICAL)
_MAX_WAIT = 600.0  # Consul caps a blocking query's wait at 10 minutes
_DEFAULT_WAIT = 300.0
_DEFAULT_GRPC_TIMEOUT = 10.0
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class _BadRequest(Exception):
    """A request Consul would answer with 400 and this text."""


def parse_duration(value: object) -> float:
    """Seconds from a Go duration string ("10s", "1m30s", "250ms") or a number of nanoseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9
    text = str(value).strip()
    if text in ("", "0"):
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise _BadRequest(f"invalid duration {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _format_duration(seconds: float) -> str:
    return "" if seconds <= 0 else f"{seconds:g}s"


def _normalized(body: Mapping[str, Any]) -> dict[str, Any]:
    """Consul decodes field names case-insensitively and accepts snake_case; fold both away."""
    return {key.replace("_", "").lower(): value for key, value in body.items()}


@dataclass(slots=True)
class _Service:
    id: str
    name: str
    tags: list[str]
    meta: dict[str, str]
    address: str
    port: int
    weights: dict[str, int]
    enable_tag_override: bool
    create_index: int
    modify_index: int

    def agent_json(self, datacenter: str) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Meta": dict(self.meta),
            "Port": self.port,
            "Address": self.address,
            "TaggedAddresses": {},
            "Weights": dict(self.weights),
            "EnableTagOverride": self.enable_tag_override,
            "Datacenter": datacenter,
        }

    def health_json(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
            "TaggedAddresses": {},
            "Meta": dict(self.meta),
            "Port": self.port,
            "Weights": dict(self.weights),
            "EnableTagOverride": self.enable_tag_override,
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "Connect": {},
            "PeerName": "",
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(slots=True)
class _Check:
    id: str
    name: str
    kind: str  # "grpc" | "ttl"
    status: str
    service_id: str = ""
    service_name: str = ""
    service_tags: list[str] = field(default_factory=list)
    notes: str = ""
    output: str = ""
    interval: float = 0.0
    timeout: float = 0.0
    ttl: float = 0.0
    grpc: str = ""
    grpc_use_tls: bool = False
    tls_server_name: str = ""
    deregister_critical_after: float = 0.0
    success_before_passing: int = 0
    failures_before_critical: int = 0
    consecutive_successes: int = 0
    consecutive_failures: int = 0
    critical_since: float | None = None
    ttl_deadline: float = 0.0
    create_index: int = 0
    modify_index: int = 0
    runner: asyncio.Task[None] | None = None
    refreshed: asyncio.Event = field(default_factory=asyncio.Event)

    def as_json(self, node: str) -> dict[str, Any]:
        definition: dict[str, Any] = {}
        if self.deregister_critical_after:
            definition["DeregisterCriticalServiceAfter"] = _format_duration(self.deregister_critical_after)
        return {
            "Node": node,
            "CheckID": self.id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(self.service_tags),
            "Type": self.kind,
            "Interval": _format_duration(self.interval),
            "Timeout": _format_duration(self.timeout),
            "ExposedPort": 0,
            "Definition": definition,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(slots=True)
class _KVEntry:
    value: bytes
    flags: int
    create_index: int
    modify_index: int

    def as_json(self, key: str) -> dict[str, Any]:
        return {
            "LockIndex": 0,
            "Key": key,
            "Flags": self.flags,
            # Consul sends null for an empty value, base64 otherwise.
            "Value": base64.b64encode(self.value).decode() if self.value else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class ConsulAgentDouble:
    """A single-node Consul agent double on 127.0.0.1; use ``async with`` or start()/stop()."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        node: str = "agentmesh-double",
        datacenter: str = "dc1",
        reap_interval: float = 30.0,
        min_deregister_critical_after: float = 60.0,
        min_check_interval: float = 1.0,
        grpc_root_certificates: bytes | None = None,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._node = node
        self._node_id = str(uuid.uuid4())
        self._datacenter = datacenter
        self._reap_interval = reap_interval
        self._min_deregister_after = min_deregister_critical_after
        self._min_check_interval = min_check_interval
        self._grpc_root_certificates = grpc_root_certificates
        self._index = 1
        self._changed = asyncio.Event()
        self._closing = False
        self._services: dict[str, _Service] = {}
        self._checks: dict[str, _Check] = {}
        self._service_name_index: dict[str, int] = {}
        self._catalog_index = 1
        self._kv: dict[str, _KVEntry] = {}
        self._kv_tombstones: dict[str, int] = {}
        self._kv_index = 1
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def http_addr(self) -> str:
        """``host:port``, the form ``CONSUL_HTTP_ADDR`` takes."""
        return f"{self._host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.put("/v1/agent/service/register", self._register_service),
                web.put("/v1/agent/service/deregister/{id}", self._deregister_service),
                web.get("/v1/agent/services", self._agent_services),
                web.get("/v1/agent/service/{id}", self._agent_service),
                web.put("/v1/agent/check/register", self._register_check),
                web.put("/v1/agent/check/deregister/{id}", self._deregister_check),
                web.get("/v1/agent/checks", self._agent_checks),
                web.put("/v1/agent/check/pass/{id}", self._ttl_update),
                web.put("/v1/agent/check/warn/{id}", self._ttl_update),
                web.put("/v1/agent/check/fail/{id}", self._ttl_update),
                web.put("/v1/agent/check/update/{id}", self._ttl_update),
                web.get("/v1/health/service/{name}", self._health_service),
                web.get("/v1/catalog/services", self._catalog_services),
                web.get("/v1/kv/{key:.*}", self._kv_get),
                web.put("/v1/kv/{key:.*}", self._kv_put),
                web.delete("/v1/kv/{key:.*}", self._kv_delete),
                web.get("/v1/status/leader", self._status_leader),
            ]
        )
        self._closing = False
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.port = server.sockets[0].getsockname()[1]
        self._reaper = asyncio.create_task(self._reap_forever(), name="consul-double-reaper")

    async def stop(self) -> None:
        """Stop serving; state is dropped, like an agent started afresh in dev mode."""
        self._closing = True
        self._notify()  # release blocking queries so shutdown does not wait for them
        tasks = [c.runner for c in self._checks.values() if c.runner is not None]
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- raft-ish index and change notification -------------------------------------------

    def _bump(self) -> int:
        self._index += 1
        return self._index

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _blocking(self, request: web.Request, read: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
        """Consul's blocking query: wait while the result index is <= ``index``, up to ``wait``."""
        min_index = int(request.query.get("index", "0") or 0)
        index, result = read()
        if min_index <= 0:
            return index, result
        wait = min(parse_duration(request.query.get("wait", "")) or _DEFAULT_WAIT, _MAX_WAIT)
        deadline = time.monotonic() + wait + random.uniform(0, wait / 16)
        while index <= min_index and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()
            index, result = read()
        return index, result

    def _json(self, body: Any, *, index: int | None = None, status: int = 200) -> web.Response:
        headers = {"X-Consul-Effective-Consistency": "leader", "X-Consul-KnownLeader": "true"}
        if index is not None:
            headers["X-Consul-Index"] = str(max(index, 1))
            headers["X-Consul-LastContact"] = "0"
        return web.json_response(body, status=status, headers=headers)

    @staticmethod
    def _text(text: str, status: int) -> web.Response:
        return web.Response(text=text, status=status, content_type="text/plain")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except json.JSONDecodeError as error:
            raise _BadRequest(f"Request decode failed: {error}") from error
        if not isinstance(body, dict):
            raise _BadRequest("Request decode failed: expected a JSON object")
        return body

    # -- services ---------------------------------------------------------------------------

    async def _register_service(self, request: web.Request) -> web.Response:
        try:
            body = _normalized(await self._body(request))
            name = str(body.get("name") or "")
            if not name:
                raise _BadRequest("Missing service name")
            service_id = str(body.get("id") or name)
            check_bodies = self._check_bodies(body)
            checks = [
                self._build_check(
                    _normalized(raw),
                    default_id=f"service:{service_id}" + (f":{i + 1}" if len(check_bodies) > 1 else ""),
                    default_name=f"Service '{name}' check",
                    service_id=service_id,
                )
                for i, raw in enumerate(check_bodies)
            ]
            weights = _normalized(body.get("weights") or {})
            port = int(body.get("port") or 0)
        except (_BadRequest, TypeError, ValueError) as error:
            return self._text(str(error), 400)

        existing = self._services.get(service_id)
        index = self._bump()
        service = _Service(
            id=service_id,
            name=name,
            tags=[str(t) for t in body.get("tags") or []],
            meta={str(k): str(v) for k, v in (body.get("meta") or {}).items()},
            address=str(body.get("address") or ""),
            port=port,
            weights={"Passing": int(weights.get("passing", 1)), "Warning": int(weights.get("warning", 1))},
            enable_tag_override=bool(body.get("enabletagoverride", False)),
            create_index=existing.create_index if existing else index,
            modify_index=index,
        )
        if existing is not None and existing.name != name:
            self._service_name_index[existing.name] = index
        self._services[service_id] = service
        replace = request.query.get("replace-existing-checks", "").lower() in ("1", "true")
        new_ids = {c.id for c in checks}
        if replace:
            for old in [c for c in self._checks.values() if c.service_id == service_id]:
                if old.id not in new_ids:
                    self._drop_check(old.id)
        for check in checks:
            check.service_name, check.service_tags = name, list(service.tags)
            self._add_check(check, index)
        self._service_name_index[name] = index
        self._catalog_index = index
        self._notify()
        return web.Response(status=200)

    @staticmethod
    def _check_bodies(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        bodies: list[Mapping[str, Any]] = []
        if body.get("check"):
            bodies.append(body["check"])
        bodies.extend(body.get("checks") or [])
        for raw in bodies:
            if not isinstance(raw, Mapping):
                raise _BadRequest("Invalid check: expected an object")
        return bodies

    async def _deregister_service(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        if service_id not in self._services:
            return self._text(
                f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.',
                404,
            )
        self._remove_service(service_id)
        return web.Response(status=200)

    def _remove_service(self, service_id: str) -> None:
        service = self._services.pop(service_id)
        for check_id in [c.id for c in self._checks.values() if c.service_id == service_id]:
            self._drop_check(check_id)
        index = self._bump()
        self._service_name_index[service.name] = index
        self._catalog_index = index
        self._notify()

    async def _agent_services(self, request: web.Request) -> web.Response:
        return self._json({sid: s.agent_json(self._datacenter) for sid, s in self._services.items()})

    async def _agent_service(self, request: web.Request) -> web.Response:
        service = self._services.get(request.match_info["id"])
        if service is None:
            return self._text("unknown service ID: " + request.match_info["id"], 404)
        return self._json(service.agent_json(self._datacenter), index=service.modify_index)

    # -- checks -----------------------------------------------------------------------------

    def _build_check(self, body: Mapping[str, Any], *, default_id: str, default_name: str, service_id: str) -> _Check:
        if body.get("grpc"):
            kind = "grpc"
        elif body.get("ttl"):
            kind = "ttl"
        else:
            raise _BadRequest("Invalid check: this Consul double runs only GRPC and TTL checks")
        status = str(body.get("status") or CRITICAL)
        if status not in _STATUSES:
            raise _BadRequest(f"Invalid check status {status!r}")
        check = _Check(
            id=str(body.get("checkid") or body.get("id") or default_id),
            name=str(body.get("name") or default_name),
            kind=kind,
            status=status,
            service_id=str(body.get("serviceid") or service_id),
            notes=str(body.get("notes") or ""),
            interval=parse_duration(body.get("interval", "")),
            timeout=parse_duration(body.get("timeout", "")),
            ttl=parse_duration(body.get("ttl", "")),
            grpc=str(body.get("grpc") or ""),
            grpc_use_tls=bool(body.get("grpcusetls", False)),
            tls_server_name=str(body.get("tlsservername") or ""),
            deregister_critical_after=parse_duration(body.get("deregistercriticalserviceafter", "")),
            success_before_passing=int(body.get("successbeforepassing") or 0),
            failures_before_critical=int(body.get("failuresbeforecritical") or 0),
        )
        if kind == "grpc" and check.interval <= 0:
            raise _BadRequest("Invalid check: Interval must be > 0 for a GRPC check")
        if kind == "grpc":
            check.interval = max(check.interval, self._min_check_interval)  # Consul raises it, with a warning
        if kind == "grpc" and check.timeout <= 0:
            check.timeout = _DEFAULT_GRPC_TIMEOUT
        return check

    def _add_check(self, check: _Check, index: int) -> None:
        previous = self._checks.get(check.id)
        if previous is not None:
            # Re-registering keeps the check's current state, as Consul's agent does.
            check.status, check.output = previous.status, previous.output
            check.critical_since, check.create_index = previous.critical_since, previous.create_index
            self._drop_check(check.id)
        else:
            check.create_index = index
        check.modify_index = index
        if check.status == CRITICAL and check.critical_since is None:
            check.critical_since = time.monotonic()
        if check.kind == "ttl":
            check.ttl_deadline = time.monotonic() + check.ttl
            check.runner = asyncio.create_task(self._run_ttl(check), name=f"ttl:{check.id}")
        else:
            check.runner = asyncio.create_task(self._run_grpc(check), name=f"grpc:{check.id}")
        self._checks[check.id] = check

    def _drop_check(self, check_id: str) -> None:
        check = self._checks.pop(check_id)
        if check.runner is not None:
            check.runner.cancel()

    def _set_status(self, check: _Check, status: str, output: str) -> None:
        if self._checks.get(check.id) is not check:
            return  # deregistered while its probe was in flight
        changed = status != check.status
        check.output = output
        if not changed:
            return  # Consul syncs output-only changes lazily; no index bump, no wake-ups
        check.status = status
        check.critical_since = time.monotonic() if status == CRITICAL else None
        index = self._bump()
        check.modify_index = index
        if check.service_name:
            self._service_name_index[check.service_name] = index
        self._notify()

    async def _register_check(self, request: web.Request) -> web.Response:
        try:
            body = _normalized(await self._body(request))
            name = str(body.get("name") or "")
            if not name:
                raise _BadRequest("Missing check name")
            service_id = str(body.get("serviceid") or "")
            service = self._services.get(service_id) if service_id else None
            if service_id and service is None:
                return self._text(f'ServiceID "{service_id}" does not exist', 400)
            check = self._build_check(body, default_id=name, default_name=name, service_id=service_id)
        except (_BadRequest, TypeError, ValueError) as error:
            return self._text(str(error), 400)
        if service is not None:
            check.service_name, check.service_tags = service.name, list(service.tags)
        index = self._bump()
        self._add_check(check, index)
        if service is not None:
            self._service_name_index[service.name] = index
        self._notify()
        return web.Response(status=200)

    async def _deregister_check(self, request: web.Request) -> web.Response:
        check = self._checks.get(request.match_info["id"])
        if check is None:
            return self._text(f"Unknown check ID {request.match_info['id']!r}", 404)
        self._drop_check(check.id)
        index = self._bump()
        if check.service_name:
            self._service_name_index[check.service_name] = index
        self._notify()
        return web.Response(status=200)

    async def _agent_checks(self, request: web.Request) -> web.Response:
        return self._json({cid: c.as_json(self._node) for cid, c in self._checks.items()})

    async def _ttl_update(self, request: web.Request) -> web.Response:
        check = self._checks.get(request.match_info["id"])
        if check is None or check.kind != "ttl":
            return self._text(f"Unknown check ID {request.match_info['id']!r}", 404)
        verb = request.path.rsplit("/", 2)[-2]
        if verb == "update":
            try:
                body = _normalized(await self._body(request))
            except _BadRequest as error:
                return self._text(str(error), 400)
            status, output = str(body.get("status") or ""), str(body.get("output") or "")
            if status not in _STATUSES:
                return self._text(f"Invalid check status: {status!r}", 400)
        else:
            status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[verb]
            output = request.query.get("note", "")
        check.ttl_deadline = time.monotonic() + check.ttl
        check.refreshed.set()
        self._set_status(check, status, output)
        return web.Response(status=200)

    async def _run_ttl(self, check: _Check) -> None:
        while True:
            remaining = check.ttl_deadline - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
                continue
            self._set_status(check, CRITICAL, "TTL expired")
            check.refreshed.clear()
            await check.refreshed.wait()

    async def _run_grpc(self, check: _Check) -> None:
        await asyncio.sleep(random.uniform(0, check.interval))  # Consul staggers a check's first run
        while True:
            healthy, output = await self._probe_grpc(check)
            if healthy:
                check.consecutive_failures = 0
                check.consecutive_successes += 1
                if check.consecutive_successes > check.success_before_passing:
                    self._set_status(check, PASSING, output)
            else:
                check.consecutive_successes = 0
                check.consecutive_failures += 1
                if check.consecutive_failures > check.failures_before_critical:
                    self._set_status(check, CRITICAL, output)
            await asyncio.sleep(check.interval)

    async def _probe_grpc(self, check: _Check) -> tuple[bool, str]:
        target, _, service = check.grpc.partition("/")
        if check.grpc_use_tls:
            options = [("grpc.ssl_target_name_override", check.tls_server_name)] if check.tls_server_name else []
            credentials = grpc.ssl_channel_credentials(root_certificates=self._grpc_root_certificates)
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(target)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=check.timeout)
        except grpc.aio.AioRpcError as error:
            return (
                False,
                f"gRPC check {check.grpc}: failed: rpc error: code = {error.code().name} desc = {error.details()}",
            )
        finally:
            await channel.close(None)
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return True, f"gRPC check {check.grpc}: success"
        status_name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return False, f"gRPC check {check.grpc}: failed, service reported status {status_name}"

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self._reap_interval)
            now = time.monotonic()
            doomed = {
                c.service_id
                for c in self._checks.values()
                if c.service_id
                and c.deregister_critical_after > 0
                and c.status == CRITICAL
                and c.critical_since is not None
                and now - c.critical_since >= max(c.deregister_critical_after, self._min_deregister_after)
            }
            for service_id in doomed:
                if service_id in self._services:
                    self._remove_service(service_id)

    # -- health and catalog -----------------------------------------------------------------

    def _serf_health(self) -> dict[str, Any]:
        return {
            "Node": self._node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": PASSING,
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    def _node_json(self) -> dict[str, Any]:
        return {
            "ID": self._node_id,
            "Node": self._node,
            "Address": self._host,
            "Datacenter": self._datacenter,
            "TaggedAddresses": {"lan": self._host, "wan": self._host},
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": 1,
            "ModifyIndex": 1,
        }

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        passing_only = "passing" in request.query and request.query["passing"].lower() not in ("0", "false")
        tags = request.query.getall("tag", [])

        def read() -> tuple[int, list[dict[str, Any]]]:
            entries = []
            for service in self._services.values():
                if service.name != name or not all(t in service.tags for t in tags):
                    continue
                checks = [self._serf_health()] + [
                    c.as_json(self._node) for c in self._checks.values() if c.service_id == service.id
                ]
                if passing_only and any(c["Status"] != PASSING for c in checks):
                    continue
                entries.append({"Node": self._node_json(), "Service": service.health_json(), "Checks": checks})
            return self._service_name_index.get(name, self._catalog_index), entries

        index, entries = await self._blocking(request, read)
        return self._json(entries, index=index)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        def read() -> tuple[int, dict[str, list[str]]]:
            names: dict[str, set[str]] = {"consul": set()}
            for service in self._services.values():
                names.setdefault(service.name, set()).update(service.tags)
            return self._catalog_index, {n: sorted(t) for n, t in names.items()}

        index, services = await self._blocking(request, read)
        return self._json(services, index=index)

    # -- KV ---------------------------------------------------------------------------------

    def _kv_prefix_index(self, prefix: str, *, exact: bool) -> int:
        def matches(key: str) -> bool:
            return key == prefix if exact else key.startswith(prefix)

        touched = [e.modify_index for k, e in self._kv.items() if matches(k)]
        touched += [i for k, i in self._kv_tombstones.items() if matches(k)]
        return max(touched, default=0) or self._kv_index

    async def _kv_get(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        recurse = "recurse" in request.query
        keys_only = "keys" in request.query
        separator = request.query.get("separator", "")

        def read() -> tuple[int, list[tuple[str, _KVEntry]]]:
            if recurse or keys_only:
                found = sorted((k, e) for k, e in self._kv.items() if k.startswith(key))
            else:
                found = [(key, self._kv[key])] if key in self._kv else []
            return self._kv_prefix_index(key, exact=not (recurse or keys_only)), found

        index, found = await self._blocking(request, read)
        if not found:
            return web.Response(status=404, headers={"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true"})
        if keys_only:
            listed: list[str] = []
            for k, _ in found:
                cut = k.find(separator, len(key)) if separator else -1
                entry = k[: cut + len(separator)] if cut >= 0 else k
                if entry not in listed:
                    listed.append(entry)
            return self._json(listed, index=index)
        if "raw" in request.query and not recurse:
            return web.Response(body=found[0][1].value, headers={"X-Consul-Index": str(index)})
        return self._json([e.as_json(k) for k, e in found], index=index)

    async def _kv_put(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        value = await request.read()
        try:
            flags = int(request.query.get("flags", "0") or 0)
            cas = int(request.query["cas"]) if "cas" in request.query else None
        except ValueError:
            return self._text("Invalid cas or flags: must be an unsigned integer", 400)
        if len(value) > 512 * 1024:
            return self._text("Value exceeds 524288 byte limit", 413)
        existing = self._kv.get(key)
        if cas is not None:
            # cas=0 creates only when absent; otherwise the ModifyIndex must match.
            current = existing.modify_index if existing else 0
            if cas != current:
                return self._json(False)
        index = self._bump()
        self._kv[key] = _KVEntry(
            value=value,
            flags=flags,
            create_index=existing.create_index if existing else index,
            modify_index=index,
        )
        self._kv_tombstones.pop(key, None)
        self._kv_index = index
        self._notify()
        return self._json(True)

    async def _kv_delete(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        recurse = "recurse" in request.query
        doomed: Iterable[str] = [k for k in self._kv if k.startswith(key)] if recurse else [key]
        doomed = [k for k in doomed if k in self._kv]
        if "cas" in request.query:
            entry = self._kv.get(key)
            if recurse or entry is None or int(request.query["cas"]) != entry.modify_index:
                return self._json(False)
        if doomed:
            index = self._bump()
            for k in doomed:
                del self._kv[k]
                self._kv_tombstones[k] = index
            self._kv_index = index
            self._notify()
        return self._json(True)

    async def _status_leader(self, request: web.Request) -> web.Response:
        return self._json(f"{self._host}:8300")


async def _serve(port: int) -> None:
    async with ConsulAgentDouble(port=port) as agent:
        print(f"consul agent test double listening on http://{agent.http_addr}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m tools.consul_double --port 8500``: serve the double until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8500)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
