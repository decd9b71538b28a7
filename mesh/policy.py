"""The traffic policy model: ``mesh/policy.yaml`` parsed and checked before anything is rendered.

Every model forbids unknown keys, so a typo in the policy fails loudly instead of silently
rendering a mesh without the setting someone thought they had written.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from interceptors.selector import MethodPattern

DEFAULT_POLICY_PATH = Path(__file__).with_name("policy.yaml")

_DURATION = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; write e.g. '250ms', '2s' or '1m'")
    return timedelta(seconds=float(match["value"]) * _UNIT_SECONDS[match["unit"]])


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


# Checked here, kept as the author wrote it; renderers convert with proto_duration().
Duration = Annotated[str, AfterValidator(_check_duration)]

# gRPC status names as Envoy's `retry_on` and Istio's `retryOn` spell them.
RetryableCode = Literal["cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"]
AbortCode = Literal["unavailable", "internal", "resource-exhausted", "deadline-exceeded", "cancelled"]

GRPC_CODE_NUMBERS: dict[str, int] = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}

# Health is always open: probes and load balancers carry no token.
HEALTH_METHODS = "/grpc.health.v1.Health/*"

ServiceName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
Version = Annotated[str, Field(pattern=r"^v[0-9]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(_Strict):
    namespace: str
    service_account: str


class HttpRoute(_Strict):
    """An HTTP path the edge sends to the upstream's HTTP side (services/gateway/http_entry.py)."""

    path: Annotated[str, Field(pattern=r"^/[^*?#]*$")]  # exact
    # Served without a token (discovery metadata such as the A2A Agent Card); others need one.
    public: bool = False
    timeout: Duration = "30s"


class Edge(_Strict):
    identity: Identity
    hosts: list[str]
    upstream: ServiceName
    transcode: list[str]
    http_routes: list[HttpRoute] = []


class Jwt(_Strict):
    issuer: str
    jwks_uri: str
    # One audience: every service checks exactly this one (AuthSettings.audience).
    audience: str
    # Slack on exp/nbf, the same at the edge and in every service.
    clock_skew: Duration
    # Callable without a token; everything else the edge routes needs a valid one.
    public_methods: list[MethodPattern]


class Retries(_Strict):
    # Retries after the first try (Envoy's num_retries, Istio's attempts).
    attempts: Annotated[int, Field(ge=1, le=10)]
    per_try_timeout: Duration
    retry_on: list[RetryableCode] = Field(min_length=1)


class Route(_Strict):
    methods: list[MethodPattern] = Field(min_length=1)
    timeout: Duration
    retries: Retries | None = None


class ConnectionPool(_Strict):
    max_connections: Annotated[int, Field(ge=1)]
    max_pending_requests: Annotated[int, Field(ge=1)]
    max_requests: Annotated[int, Field(ge=1)]
    max_retries: Annotated[int, Field(ge=0)]


class OutlierDetection(_Strict):
    consecutive_errors: Annotated[int, Field(ge=1)]
    interval: Duration
    base_ejection_time: Duration
    max_ejection_percent: Annotated[int, Field(ge=0, le=100)]


class HealthCheck(_Strict):
    interval: Duration
    timeout: Duration
    unhealthy_threshold: Annotated[int, Field(ge=1)]
    healthy_threshold: Annotated[int, Field(ge=1)]


class Canary(_Strict):
    header: str
    value: str
    version: Version
    weights: dict[Version, Annotated[int, Field(ge=0, le=100)]]

    @model_validator(mode="after")
    def _weights_total_100(self) -> Canary:
        if sum(self.weights.values()) != 100:
            raise ValueError(f"canary weights must add up to 100, got {sum(self.weights.values())}")
        return self


class Resources(_Strict):
    cpu: str
    memory: str


class Roles(_Strict):
    """The agent's two jobs in Deployments of their own (``AGENTMESH_AGENT_ROLE``, docs/agent.md).

    Callers reach only the ``serve`` pods, so reads are not accepted behind executing runs; the
    ``execute`` pods claim the runs the serve pods admit, through the shared PostgreSQL.
    """

    serve: Annotated[int, Field(ge=1)]
    execute: Annotated[int, Field(ge=1)]


# Only the agent runs apart by role (services/agent/config.py's `role`).
ROLE_SERVICES = frozenset({"agent"})


class Service(_Strict):
    port: Annotated[int, Field(ge=1, le=65535)]
    # The app's HTTP side in its pod (the edge upstream's, where edge.http_routes go on Kubernetes).
    http_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    versions: list[Version] = Field(min_length=1)
    # Pods per version on Kubernetes; every one serves any request (state is shared, see `state`).
    replicas: Annotated[int, Field(ge=1)] | None = None
    # Instead of `replicas`: pods per role per version, each role a Deployment of its own (agent only).
    roles: Roles | None = None
    canary: Canary | None = None
    # caller name -> method patterns it may call; a caller is a service name or "edge".
    callers: dict[str, list[MethodPattern]]
    # First match wins, as in Envoy and Istio; the last route should catch "*".
    routes: list[Route] = Field(min_length=1)
    connection_pool: ConnectionPool
    outlier_detection: OutlierDetection
    health_check: HealthCheck
    resources: Resources

    @model_validator(mode="after")
    def _last_route_catches_all(self) -> Service:
        # Otherwise a new method would fall through every route and fail as UNIMPLEMENTED.
        if "*" not in self.routes[-1].methods:
            raise ValueError('the last route must match "*" so that every method has a timeout')
        return self

    def pods_per_role(self) -> dict[str, int]:
        """Role -> pods per version: ``{"all": replicas}``, or the serve and execute counts."""
        if self.roles is None:
            assert self.replicas is not None  # _replicas_or_roles
            return {"all": self.replicas}
        return {"serve": self.roles.serve, "execute": self.roles.execute}

    @model_validator(mode="after")
    def _replicas_or_roles(self) -> Service:
        if (self.replicas is None) == (self.roles is None):
            raise ValueError("give exactly one of replicas (pods that serve and execute) or roles (pods per role)")
        return self

    @model_validator(mode="after")
    def _canary_names_known_versions(self) -> Service:
        if self.canary is None and len(self.versions) > 1:
            raise ValueError(f"versions {self.versions} need a canary section to say how traffic splits")
        if self.canary is not None:
            unknown = ({self.canary.version} | set(self.canary.weights)) - set(self.versions)
            if unknown:
                raise ValueError(f"canary names versions {sorted(unknown)} not in versions {self.versions}")
        return self


class Store(_Strict):
    image: str
    # The PersistentVolumeClaim's size ("10Gi").
    storage: str
    resources: Resources


class SharedState(_Strict):
    """What every replica of every service must agree on lives here, never in a pod."""

    # The Secret holding each service's database URL (key: the service name) and the in-cluster
    # PostgreSQL's password; created by the operator (istio/README.md), never rendered.
    database_secret: str
    postgres: Store
    redis: Store
    # Service -> its own database in the in-cluster PostgreSQL.
    databases: dict[ServiceName, str]
    # Services that use Redis (the agent's event bus and idempotency keys).
    redis_users: list[ServiceName]


class Fault(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*$")]
    service: ServiceName
    delay: Duration | None = None
    abort: AbortCode | None = None

    @model_validator(mode="after")
    def _delay_or_abort(self) -> Fault:
        if (self.delay is None) == (self.abort is None):
            raise ValueError(f"fault {self.name!r} needs exactly one of delay or abort")
        return self


class LocalInstance(_Strict):
    app: int
    # The app's HTTP side (the edge upstream's, when the edge has http_routes).
    http: int | None = None
    inbound: int
    admin: int
    outbound: dict[ServiceName, int]


class LocalEdge(_Strict):
    port: int
    admin: int


class Local(_Strict):
    certs_dir: str
    # The dev issuer's public keys (tools/dev_auth.py writes them); the edge reads this file.
    jwks_file: str
    edge: LocalEdge
    # "<service>-<version>" -> ports
    instances: dict[str, LocalInstance]


class Proxy(_Strict):
    """How every Envoy of the mesh runs, as Envoy's "how to benchmark Envoy" FAQ advises for a hot path.

    The defaults are Envoy's own (what an unconfigured Envoy does); `policy.yaml` sets the tuned values.
    """

    # Worker threads per Envoy (`--concurrency`); 0 matches the machine's cores, as Envoy does
    # unset and Istio does for concurrency 0 (from the pod's CPU limit).
    concurrency: Annotated[int, Field(ge=0, le=64)] = 1
    # A fresh x-request-id on every request (a UUID): only worth it where access logs or tracing use it.
    generate_request_id: bool = True
    # The router's per-code and timing stats (upstream_rq_2xx, upstream_rq_time, ...) on every request.
    dynamic_stats: bool = True
    # x-envoy-* headers added to every request and response (upstream service time, attempt count...).
    suppress_envoy_headers: bool = False

    def worker_threads(self) -> int:
        return self.concurrency or os.cpu_count() or 1


class Policy(_Strict):
    trust_domain: str
    namespace: str
    edge: Edge
    jwt: Jwt
    proxy: Proxy = Field(default_factory=Proxy)
    services: dict[ServiceName, Service]
    state: SharedState
    faults: list[Fault] = []
    fault_header: str
    local: Local

    @model_validator(mode="after")
    def _references_resolve(self) -> Policy:
        known_callers = {*self.services, "edge"}
        for name, service in self.services.items():
            unknown = set(service.callers) - known_callers
            if unknown:
                raise ValueError(f"service {name!r} allows unknown callers {sorted(unknown)}")
        if self.edge.upstream not in self.services:
            raise ValueError(f"edge upstream {self.edge.upstream!r} is not a service")
        for fault in self.faults:
            if fault.service not in self.services:
                raise ValueError(f"fault {fault.name!r} targets unknown service {fault.service!r}")
        for name, service in self.services.items():
            if service.roles is None:
                continue
            if name not in ROLE_SERVICES:
                raise ValueError(
                    f"services.{name}.roles: only {', '.join(sorted(ROLE_SERVICES))} runs apart by role; "
                    "give it replicas instead"
                )
            if name not in self.state.databases:
                raise ValueError(
                    f"services.{name}.roles needs state.databases.{name}: serve and execute pods share runs "
                    "only through one PostgreSQL database (DATABASE_URL)"
                )
        unknown_users = ({*self.state.databases, *self.state.redis_users}) - set(self.services)
        if unknown_users:
            raise ValueError(f"state names unknown services {sorted(unknown_users)}")
        if self.edge.http_routes and self.services[self.edge.upstream].http_port is None:
            raise ValueError(f"edge.http_routes need services.{self.edge.upstream}.http_port")
        if self.edge.http_routes:
            lacking = [
                name
                for name, ports in self.local.instances.items()
                if name.rpartition("-")[0] == self.edge.upstream and ports.http is None
            ]
            if lacking:
                raise ValueError(
                    f"edge.http_routes need an http port on every {self.edge.upstream} instance: {lacking}"
                )
        edge_may_call = self.services[self.edge.upstream].callers.get("edge", [])
        unreachable = [m for m in self.jwt.public_methods if m not in edge_may_call and m != HEALTH_METHODS]
        if unreachable:
            # A public method the edge may not call is a contradiction, not a harmless extra.
            raise ValueError(f"jwt.public_methods {unreachable} are not among the methods the edge may call")
        return self

    def identity(self, caller: str) -> Identity:
        """The Kubernetes identity (namespace, service account) a caller runs as."""
        if caller == "edge":
            return self.edge.identity
        return Identity(namespace=self.namespace, service_account=caller)

    def spiffe_id(self, caller: str) -> str:
        identity = self.identity(caller)
        return f"spiffe://{self.trust_domain}/ns/{identity.namespace}/sa/{identity.service_account}"

    def callees(self, caller: str) -> list[str]:
        """Services ``caller`` may call, in policy order."""
        return [name for name, service in self.services.items() if caller in service.callers]

    def faults_for(self, service: str) -> list[Fault]:
        return [fault for fault in self.faults if fault.service == service]


def proto_duration(duration: str) -> str:
    """A policy duration in the protobuf JSON form ("0.6s") that both Envoy and Istio read."""
    return f"{parse_duration(duration).total_seconds():g}s"


def load_policy(path: Path = DEFAULT_POLICY_PATH) -> Policy:
    with path.open(encoding="utf-8") as handle:
        return Policy.model_validate(yaml.safe_load(handle))
