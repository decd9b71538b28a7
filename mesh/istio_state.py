"""The shared backends on Kubernetes: PostgreSQL and Redis, each a StatefulSet on its own volume.

Every replica of every service version keeps its state here, not in its pod, so the mesh may
send any request to any of them. Each store is one file (``postgres.yaml``, ``redis.yaml``) with
everything it needs (identity, Service, StatefulSet, who may connect), so an operator using a
managed PostgreSQL drops one file and puts that database's URLs in the Secret instead.
"""

from __future__ import annotations

from mesh.kube import CONTAINER_SECURITY, Manifest, host, meta, pod_security, principal, resources, service_account
from mesh.policy import Policy, Store

POSTGRES = "postgres"
POSTGRES_PORT = 5432
POSTGRES_USER = "agentmesh"
# The Secret key of the in-cluster server's password (the URLs carry it too).
POSTGRES_PASSWORD_KEY = "postgres-password"
# uid of the postgres and redis users in their official Debian images.
_STORE_UID = 999
REDIS = "redis"
REDIS_PORT = 6379


def redis_url(policy: Policy) -> str:
    return f"redis://{host(policy, REDIS)}:{REDIS_PORT}/0"


def _headless_service(policy: Policy, name: str, port: int) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(policy, name, app=name),
        "spec": {
            # A StatefulSet's governing Service: clients reach the pod itself.
            "clusterIP": "None",
            "selector": {"app": name},
            # "tcp-" tells Istio the protocol; the sidecars still speak mTLS between them.
            "ports": [
                {"name": f"tcp-{name}", "port": port, "targetPort": port, "protocol": "TCP", "appProtocol": "tcp"}
            ],
        },
    }


def _exec_probe(command: list[str], *, initial_delay: int) -> Manifest:
    return {
        "exec": {"command": command},
        "initialDelaySeconds": initial_delay,
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }


def _stateful_set(
    policy: Policy,
    name: str,
    store: Store,
    *,
    container: Manifest,
    data_path: str,
    extra_volumes: list[Manifest],
) -> Manifest:
    container = {
        "name": name,
        "image": store.image,
        **container,
        "resources": resources(store.resources),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "data", "mountPath": data_path}, *container.get("volumeMounts", [])],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(policy, name, app=name),
        "spec": {
            "serviceName": name,
            # One writer; high availability is a managed database's job (istio/README.md).
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "sidecar.istio.io/inject": "true"}},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": pod_security(_STORE_UID),
                    "containers": [container],
                    "volumes": extra_volumes,
                },
            },
            # The data outlives the pod: a rescheduled pod gets the same volume back.
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": store.storage}}},
                }
            ],
        },
    }


def _clients_only(policy: Policy, name: str, clients: list[str]) -> Manifest:
    """Only the services that use a store may connect to it (by their mTLS identity)."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": meta(policy, name),
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": [principal(policy, c) for c in clients]}}]}],
        },
    }


def postgres_objects(policy: Policy) -> list[Manifest]:
    state = policy.state
    # Runs once, when the volume is empty: one database per service that has one.
    create = " ".join(f'CREATE DATABASE "{database}";' for database in state.databases.values())
    init = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(policy, "postgres-init", app=POSTGRES),
        "data": {"01-databases.sql": create},
    }
    ready = ["pg_isready", "-h", "127.0.0.1", "-U", POSTGRES_USER]
    container: Manifest = {
        "ports": [{"name": f"tcp-{POSTGRES}", "containerPort": POSTGRES_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "POSTGRES_USER", "value": POSTGRES_USER},
            {
                "name": "POSTGRES_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": state.database_secret, "key": POSTGRES_PASSWORD_KEY}},
            },
            # A subdirectory: a fresh volume's root may hold lost+found, which initdb refuses.
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ],
        "readinessProbe": _exec_probe(ready, initial_delay=5),
        "livenessProbe": _exec_probe(ready, initial_delay=30),
        "volumeMounts": [
            {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True},
            {"name": "run", "mountPath": "/var/run/postgresql"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    volumes = [
        {"name": "init", "configMap": {"name": "postgres-init"}},
        {"name": "run", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    return [
        service_account(policy, POSTGRES),
        _headless_service(policy, POSTGRES, POSTGRES_PORT),
        init,
        _stateful_set(
            policy,
            POSTGRES,
            state.postgres,
            container=container,
            data_path="/var/lib/postgresql/data",
            extra_volumes=volumes,
        ),
        _clients_only(policy, POSTGRES, list(state.databases)),
    ]


def redis_objects(policy: Policy) -> list[Manifest]:
    ping = ["redis-cli", "-p", str(REDIS_PORT), "ping"]
    container: Manifest = {
        # Append-only file: events not yet delivered and idempotency keys survive a restart.
        "args": ["redis-server", "--appendonly", "yes", "--dir", "/data", "--port", str(REDIS_PORT)],
        "ports": [{"name": f"tcp-{REDIS}", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "readinessProbe": _exec_probe(ping, initial_delay=2),
        "livenessProbe": _exec_probe(ping, initial_delay=15),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return [
        service_account(policy, REDIS),
        _headless_service(policy, REDIS, REDIS_PORT),
        _stateful_set(
            policy,
            REDIS,
            policy.state.redis,
            container=container,
            data_path="/data",
            extra_volumes=[{"name": "tmp", "emptyDir": {}}],
        ),
        _clients_only(policy, REDIS, list(policy.state.redis_users)),
    ]


def state_env(policy: Policy, service: str) -> list[Manifest]:
    """The settings that put ``service`` on the shared stores (none for a stateless one)."""
    prefix = f"AGENTMESH_{service.upper()}_"
    env: list[Manifest] = []
    if service in policy.state.databases:
        env.append(
            {
                "name": prefix + "DATABASE_URL",
                "valueFrom": {"secretKeyRef": {"name": policy.state.database_secret, "key": service}},
            }
        )
    if service in policy.state.redis_users:
        env += [
            {"name": prefix + "EVENT_BUS", "value": "redis"},
            {"name": prefix + "REDIS_URL", "value": redis_url(policy)},
            # Replays must work on whichever replica a retry reaches.
            {"name": prefix + "IDEMPOTENCY_STORE", "value": "redis"},
            {"name": prefix + "IDEMPOTENCY_REDIS_URL", "value": redis_url(policy)},
        ]
    return env
