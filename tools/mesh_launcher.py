"""`make run MESH=envoy`: the whole system behind Envoy, with mTLS on every hop, on loopback.

Runs exactly what ``envoy/`` holds: an edge proxy, one sidecar per service instance (agent v1
and its v2 canary included) and each app as ``python -m services.<name>`` on a plaintext
loopback port that only its own sidecar talks to. Ports are the policy's ``local`` layout.
Ctrl-C (or SIGTERM) stops the edge, then the apps front to back, then the sidecars; killed any
other way (SIGKILL included), it takes every Envoy, app and server it started with it
(``runtime.processes.tied_child``). A port of the layout already taken stops it before anything
starts, with one line naming the port and where the policy sets it.

State: agent v1 and v2 share one database (the SQLite files in ``var/``, or with
``STORE=postgres`` one local PostgreSQL, tools/local_store.py), each with its own instance id.

Auth is on at both layers: the edge refuses calls without a valid token (the dev issuer's JWKS
in ``var/keys``, from ``tools.dev_auth``), and every app verifies the forwarded token again
against the same keys with the policy's issuer, audience and public methods.

The console (http://127.0.0.1:8080) and Prometheus start first (tools/console_stack.py): every
app exports metrics and spans to them, and the console reads runs through the edge like any client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import grpc

from agentmesh.rag.v1 import document_pb2, rag_service_pb2, rag_service_pb2_grpc
from mesh.app_auth import service_auth
from mesh.certs import cert_paths, write_mesh_certs
from mesh.envoy_process import EnvoyProcess
from mesh.local_layout import LOOPBACK, instance_name, mesh_identities, split_instance
from mesh.policy import Policy, load_policy
from mesh.render import drift
from runtime.ports import ensure_free
from runtime.processes import start_tied, stop_child
from services.gateway.http_entry import AGENT_CARD_PATH, MCP_PATH
from tools.console_stack import ConsoleStack, Observed, observed_env
from tools.dev_auth import DEV_SUBJECT, DevAuth, ensure_dev_auth
from tools.local_store import LocalStore, local_store
from tools.serving import wait_serving

REPO = Path(__file__).resolve().parents[1]
WORK_DIR = REPO / "var" / "mesh"
# Started in this order (callees first), stopped in reverse.
START_ORDER = ("rag", "agent", "gateway")


class _App:
    """One service instance as its own process, in its own session (Ctrl-C reaches the launcher only)."""

    def __init__(self, instance: str, process: asyncio.subprocess.Process, port: int) -> None:
        self.instance, self.process, self.port = instance, process, port

    async def stop(self) -> None:
        await stop_child(self.process, within_s=30)


def dev_auth(policy: Policy) -> DevAuth:
    """The dev issuer's keys where the edge's config expects them, and fresh tokens."""
    jwks_file = (REPO / policy.local.jwks_file).resolve()
    auth = ensure_dev_auth(jwks_file.parent)
    if auth.jwks_file != jwks_file:
        raise RuntimeError(f"the dev JWKS is {auth.jwks_file}, but the policy's local.jwks_file says {jwks_file}")
    return auth


def app_env(policy: Policy, instance: str, auth: DevAuth, store: LocalStore) -> dict[str, str]:
    """The environment for one app: its own port, its callees at its sidecar's outbound ports, auth, state."""
    service, _ = split_instance(instance)
    ports = policy.local.instances[instance]
    prefix = f"AGENTMESH_{service.upper()}_"
    env = {
        **os.environ,
        **store.env,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "gen")]),
        prefix + "HOST": LOOPBACK,
        prefix + "PORT": str(ports.app),
        prefix + "LOG_FORMAT": os.environ.get(prefix + "LOG_FORMAT", "console"),
        prefix + "AUTH": json.dumps(service_auth(policy, str(auth.jwks_file))),
    }
    # Each callee is reached through this instance's own sidecar, never directly; the sidecar
    # health-checks the callee's instances, so the app does not health-check its sidecar.
    env["AGENTMESH_CLIENT_HEALTH_CHECKS"] = "false"
    via_sidecar = {callee: [f"{LOOPBACK}:{port}"] for callee, port in ports.outbound.items()}
    if service in ("gateway", "agent"):
        # The Agent Cards (public and extended) name the edge: the one address outside callers reach.
        env.setdefault(prefix + "A2A", json.dumps({"grpc_url": f"https://localhost:{policy.local.edge.port}"}))
    if service == "gateway":
        env[prefix + "BACKENDS"] = json.dumps(via_sidecar)
        if ports.http is not None:  # MCP and the Agent Card, which the edge routes here via the sidecar
            env[prefix + "HTTP_PORT"] = str(ports.http)
            env[prefix + "HTTP_PUBLIC_URL"] = f"https://localhost:{policy.local.edge.port}"
    if service == "agent":
        env[prefix + "RAG_ENDPOINTS"] = json.dumps(via_sidecar["rag"])
        # For calls to rag on no caller's behalf (runs resumed after a restart).
        env[prefix + "SERVICE_TOKEN_FILE"] = str(auth.agent_token_file)
        # v1 and v2 share the run store: each is told apart in leases and consumer groups by a name
        # that says which it is and, like the agent's own default, is new for every process.
        env[prefix + "INSTANCE_ID"] = f"{instance}-{uuid.uuid4().hex[:6]}"
    env.update(observed_env(_observed(policy, instance)))
    return env


def _observed(policy: Policy, instance: str) -> Observed:
    """What the console and Prometheus watch of one instance: its app's own port (not its sidecar's)."""
    service, version = split_instance(instance)
    return Observed(service, version, policy.local.instances[instance].app)


def listening_ports(policy: Policy, console: ConsoleStack) -> list[tuple[int, str]]:
    """Every port this run listens on, with the setting that moves it."""
    return console.ports() + layout_ports(policy)


def layout_ports(policy: Policy) -> list[tuple[int, str]]:
    """The ports the policy's local layout fixes (edge, sidecars, apps, their metrics), each with where."""
    where = "in mesh/policy.yaml, then `make mesh-render`"
    ports = [
        (policy.local.edge.port, f"local.edge.port {where}"),
        (policy.local.edge.admin, f"local.edge.admin {where}"),
    ]
    for name, instance in policy.local.instances.items():
        key = f"local.instances.{name}"
        ports += [
            (instance.app, f"{key}.app {where}"),
            (instance.inbound, f"{key}.inbound {where}"),
            (instance.admin, f"{key}.admin {where}"),
            *((port, f"{key}.outbound.{callee} {where}") for callee, port in instance.outbound.items()),
            *([] if instance.http is None else [(instance.http, f"{key}.http {where}")]),
        ]
        service, _ = split_instance(name)
        metrics = f"AGENTMESH_{service.upper()}_METRICS_PORT"
        ports.append((int(observed_env(_observed(policy, name))[metrics]), metrics))
    return ports


def console_stack(policy: Policy, auth: DevAuth) -> ConsoleStack:
    """The console reads runs the way any client does: through the edge, over TLS, with its read-only token."""
    return ConsoleStack(
        [_observed(policy, instance) for instance in policy.local.instances],
        work_dir=WORK_DIR / "console",
        gateway=f"localhost:{policy.local.edge.port}",
        token_file=auth.console_token_file,
        extra_env={
            "AGENTMESH_CONSOLE_GATEWAY_CA_FILE": str(cert_paths(REPO / policy.local.certs_dir, "edge").ca),
            # Every Envoy's admin: which instances its outlier detection or health checks keep traffic off.
            "AGENTMESH_CONSOLE_ENVOY_ADMINS": json.dumps(
                {
                    **{name: f"http://{LOOPBACK}:{ports.admin}" for name, ports in policy.local.instances.items()},
                    "edge": f"http://{LOOPBACK}:{policy.local.edge.admin}",
                }
            ),
            # Envoy dials an instance at its sidecar's inbound port; the console knows it by its app's port.
            "AGENTMESH_CONSOLE_ENVOY_UPSTREAMS": json.dumps(
                {f"{LOOPBACK}:{p.inbound}": _observed(policy, name).grpc for name, p in policy.local.instances.items()}
            ),
        },
    )


async def _start_app(policy: Policy, instance: str, auth: DevAuth, store: LocalStore) -> _App:
    service, _ = split_instance(instance)
    log = (WORK_DIR / f"{instance}.log").open("ab")
    with log:
        process = await start_tied(
            [sys.executable, "-m", f"services.{service}"],
            cwd=REPO,
            env=app_env(policy, instance, auth, store),
            stdout=log,
            stderr=log,
        )
    app = _App(instance, process, policy.local.instances[instance].app)
    try:
        await wait_serving(app.instance, f"{LOOPBACK}:{app.port}", exit_code=lambda: app.process.returncode, poll_s=0.2)
    except RuntimeError as exited:
        raise RuntimeError(f"{exited}; see {WORK_DIR / app.instance}.log") from None
    return app


async def _seed_knowledge(policy: Policy, auth: DevAuth) -> int:
    """Ingest the example documents through the edge, over TLS: the first call proves the chain."""
    ca = cert_paths(REPO / policy.local.certs_dir, "edge").ca
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{policy.local.edge.port}", credentials) as channel:
        rag = rag_service_pb2_grpc.RagServiceStub(channel)
        documents = [
            document_pb2.Document(
                document_id=path.stem, text=path.read_text(), content_type="text/markdown",
                metadata={"source": "examples"},
            )
            for path in sorted((REPO / "examples" / "knowledge").glob("*.md"))
        ]  # fmt: skip
        request = rag_service_pb2.IngestDocumentsRequest(documents=documents)
        bearer = (("authorization", f"Bearer {auth.token}"),)
        response = await rag.IngestDocuments(request, timeout=10, wait_for_ready=True, metadata=bearer)
        return sum(r.outcome != rag_service_pb2.IngestResult.OUTCOME_UNCHANGED for r in response.results)


def _http_entry_lines(policy: Policy) -> list[tuple[str, str]]:
    """The edge's HTTP routes to the gateway's HTTP side, labelled for the banner."""
    labels = {MCP_PATH: "MCP", AGENT_CARD_PATH: "Agent Card"}
    return [(labels[route.path], route.path) for route in policy.edge.http_routes if route.path in labels]


def _banner(policy: Policy, auth: DevAuth, store: LocalStore, console: ConsoleStack) -> str:
    edge = f"localhost:{policy.local.edge.port}"
    ca = f"{policy.local.certs_dir}/ca.pem"
    question = '{"question": "How long do refunds take?"}'
    token = auth.token_file.relative_to(REPO) if auth.token_file.is_relative_to(REPO) else auth.token_file
    bearer = f'-H "authorization: Bearer $(cat {token})"'
    lines = [
        "",
        f"agentmesh is up behind Envoy; the edge is https://{edge} (gRPC and HTTP/JSON, CA {ca}).",
        "",
        "  instance      app (plaintext, loopback)   sidecar (mTLS)   sidecar admin",
        *(
            f"  {name:<13} {LOOPBACK}:{ports.app:<17}   :{ports.inbound:<14}  http://{LOOPBACK}:{ports.admin}"
            for name, ports in policy.local.instances.items()
        ),
        f"  {'edge':<13} {'':<27}   :{policy.local.edge.port:<14}  http://{LOOPBACK}:{policy.local.edge.admin}",
        f"  {store.describe()}",
        *(f"  {label:<13} https://{edge}{path}" for label, path in _http_entry_lines(policy)),
        "",
        *console.banner_lines(),
        "",
        f"The edge refuses calls without a token from {policy.jwt.issuer}; {token} holds a 12-hour one",
        f"for {DEV_SUBJECT} with every scope (health and reflection need none).",
        "",
        "Try:",
        f"  curl --cacert {ca} {bearer} -X POST https://{edge}/v1/runs \\",
        f"    -H 'content-type: application/json' -d '{question}'",
        f"  curl --cacert {ca} {bearer} https://{edge}/v1/runs/RUN_ID",
        f"  .venv/bin/grpcurl -cacert {ca} {bearer} -H 'version: v2' -d '{question}' {edge} \\",
        "    agentmesh.agent.v1.AgentService/CreateRun",
        f"  .venv/bin/grpcurl -cacert {ca} {edge} list",
        f"  curl --cacert {ca} -X POST https://{edge}/v1/runs -d '{question}'   # no token: HTTP 401",
        f"  curl --cacert {ca} {bearer} -H 'content-type: application/json' -H 'accept: application/json, "
        f'text/event-stream\' -d \'{{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}}\' https://{edge}{MCP_PATH}',
        f"  curl -s http://{LOOPBACK}:{policy.local.instances['gateway-v1'].admin}/stats | grep agent_v",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def main() -> int:
    policy = load_policy()
    stale = drift(policy, REPO)
    if stale:
        print(f"envoy/ or istio/ is stale ({', '.join(map(str, stale))}): run `make mesh-render`", file=sys.stderr)
        return 1
    certs_dir = REPO / policy.local.certs_dir
    if not (certs_dir / "ca.pem").exists():
        write_mesh_certs(certs_dir, mesh_identities(policy))
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    try:
        auth = dev_auth(policy)
        console = console_stack(policy, auth)
        ensure_free(listening_ports(policy, console))  # before anything starts: a taken port is one line
        # Entered first and left last: the apps start on it and drain before it stops.
        async with local_store(REPO) as store:
            return await _run(policy, auth, store, console)
    except (RuntimeError, ValueError) as error:
        print(f"start-up failed: {error}", file=sys.stderr)
        return 1


async def _run(policy: Policy, auth: DevAuth, store: LocalStore, console: ConsoleStack) -> int:
    """Sidecars and apps callees first, then the edge; on a signal, everything in reverse."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    sidecars: list[EnvoyProcess] = []
    apps: list[_App] = []
    edge: EnvoyProcess | None = None
    code = 0
    try:
        await console.start()  # first: the apps' first spans and the first scrapes find it
        for service in START_ORDER:
            for version in policy.services[service].versions:
                instance = instance_name(service, version)
                sidecar = EnvoyProcess(
                    REPO / "envoy" / f"{instance}.yaml",
                    workdir=WORK_DIR,
                    name=instance,
                    concurrency=policy.proxy.worker_threads(),
                )
                sidecars.append(sidecar)
                await sidecar.start()
                apps.append(await _start_app(policy, instance, auth, store))
        edge = EnvoyProcess(
            REPO / "envoy" / "edge.yaml", workdir=WORK_DIR, name="edge", concurrency=policy.proxy.worker_threads()
        )
        await edge.start()
        changed = await _seed_knowledge(policy, auth)
        seeded = f"(seeded {changed} example documents)\n" if changed else ""
        print(_banner(policy, auth, store, console) + seeded, flush=True)
        while not stop.is_set():
            for app in apps:
                if app.process.returncode is not None:
                    print(f"{app.instance} exited with code {app.process.returncode}", file=sys.stderr)
                    code = 1
                    stop.set()
            if console.exited() is not None:
                print(f"the console exited; see {WORK_DIR / 'console' / 'console.log'}", file=sys.stderr)
                code = 1
                stop.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
    except (RuntimeError, TimeoutError, grpc.aio.AioRpcError) as error:
        print(f"start-up failed: {error} (logs in {WORK_DIR})", file=sys.stderr)
        code = 1
    finally:
        if edge is not None:
            await edge.stop()
        for app in reversed(apps):
            await app.stop()
        for sidecar in reversed(sidecars):
            await sidecar.stop()
        await console.stop()
    return code


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
