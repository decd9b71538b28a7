"""`make run`: the whole system on one machine, with the embedded defaults.

Starts rag, agent and gateway as their own processes (exactly `python -m services.<name>`),
waits until each reports SERVING, seeds the knowledge base from `examples/knowledge/` when it is
empty, prints where everything is, and on Ctrl-C (or SIGTERM) drains the services front to
back: gateway, then agent, then rag. Killed any other way (SIGKILL, an OOM kill, a closed
terminal), it still leaves nothing behind: every process it starts gets SIGTERM from the kernel
when the launcher dies (``runtime.processes.tied_child``). A port already taken stops it before
anything starts, with one line naming the port, the setting that moves it and who holds it.

Auth is on, as in production: the launcher creates a dev signing key and JWKS in `var/keys`
(once) and a 12-hour token with every scope in `var/keys/dev-token`, and every service verifies
tokens against that JWKS. `AGENTMESH_DEV_AUTH=0` runs without auth.

`make run STORE=postgres` keeps every service's state in one local PostgreSQL in `var/postgres`
instead of the SQLite files (tools/local_store.py), started before the services, stopped after them.

With `AGENTMESH_DISCOVERY=consul` the services register with the Consul agent at
`CONSUL_HTTP_ADDR` (default 127.0.0.1:8500) and find each other through it; the launcher waits
until each backend is passing in Consul before starting the next. `AGENTMESH_CONSUL_DOUBLE=1`
also starts the in-repo Consul agent test double there, for machines without Consul.

The mesh console (http://127.0.0.1:8080) and a Prometheus scraping every service start first
(tools/console_stack.py); every service exports metrics and sends its spans to the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from agentmesh.rag.v1 import document_pb2, rag_service_pb2, rag_service_pb2_grpc
from runtime.discovery.consul import ConsulResolver
from runtime.discovery.factory import consul_address
from runtime.discovery.settings import DiscoverySettings
from runtime.live_config.settings import DynamicSettings
from runtime.ports import ensure_free
from runtime.processes import stop_child, tied_child
from runtime.settings_errors import EXIT_INVALID_SETTING, InvalidSetting, load_settings
from services.agent.config import AgentSettings
from services.gateway.config import GatewaySettings
from services.gateway.http_entry import AGENT_CARD_PATH, MCP_PATH
from services.rag.config import RagSettings
from tools.console_stack import ConsoleStack, Observed, observed_env
from tools.dev_auth import DEV_SUBJECT, DevAuth, ensure_dev_auth
from tools.local_store import LocalStore, local_store
from tools.serving import wait_serving

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def _settings() -> tuple[DiscoverySettings, dict[str, int], int]:
    """Discovery, each service's port and the gateway's HTTP port.

    Every service's settings are read here, before anything starts, so a bad one stops
    `make run` at once with the services' own one-line message rather than a traceback.
    """
    try:
        discovery = load_settings(DiscoverySettings)
        load_settings(DynamicSettings)
        rag, agent = load_settings(RagSettings), load_settings(AgentSettings)
        gateway = load_settings(GatewaySettings)
        ports = {"rag": rag.port, "agent": agent.port, "gateway": gateway.port}
    except InvalidSetting as error:
        print(error, file=sys.stderr)
        raise SystemExit(EXIT_INVALID_SETTING) from None
    # The gateway's HTTP side (MCP, the Agent Card) is on in a local run: its own setting, else 8081.
    return discovery, ports, gateway.http_port or DEFAULT_HTTP_PORT


DEFAULT_HTTP_PORT = 8081
DISCOVERY, PORTS, GATEWAY_HTTP_PORT = _settings()


def _env(name: str, auth: DevAuth | None, store: LocalStore) -> dict[str, str]:
    env = {**os.environ, **store.env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}"}
    env.setdefault("AGENTMESH_AGENT_RAG_ENDPOINTS", f'["{HOST}:{PORTS["rag"]}"]')
    env.setdefault(
        "AGENTMESH_GATEWAY_BACKENDS",
        f'{{"agent": ["{HOST}:{PORTS["agent"]}"], "rag": ["{HOST}:{PORTS["rag"]}"]}}',
    )
    env.setdefault("AGENTMESH_LOG_FORMAT", "console")
    if DISCOVERY.discovery == "consul":
        env.setdefault("AGENTMESH_CHECK_INTERVAL_SECONDS", "1")  # snappier than the 5 s default, for a local run
    prefix = f"AGENTMESH_{name.upper()}_"
    if name in ("gateway", "agent"):
        # The Agent Cards (public and extended) name the gateway, the address callers reach.
        env.setdefault(prefix + "A2A", json.dumps({"grpc_url": f"http://{HOST}:{PORTS['gateway']}"}))
    if auth is not None:
        env.setdefault(prefix + "AUTH", auth.service_auth_json())
        if name == "agent":
            env.setdefault(prefix + "SERVICE_TOKEN_FILE", str(auth.agent_token_file))
    env[prefix + "PORT"] = str(PORTS[name])
    if name == "gateway":
        env[prefix + "HTTP_PORT"] = str(GATEWAY_HTTP_PORT)
    env.setdefault(prefix + "LOG_FORMAT", "console")
    env.update(observed_env(_observed(name)))
    return env


def _observed(name: str) -> Observed:
    return Observed(name, DISCOVERY.service_version, PORTS[name])


def listening_ports(console: ConsoleStack) -> list[tuple[int, str]]:
    """Every port this run listens on, with the setting that moves it."""
    ports = console.ports()
    if _consul_double_wanted():
        ports.append((consul_address(DISCOVERY).port, "CONSUL_HTTP_ADDR"))
    for name, port in PORTS.items():
        prefix = f"AGENTMESH_{name.upper()}_"
        metrics_port = observed_env(_observed(name))[prefix + "METRICS_PORT"]
        ports += [(port, prefix + "PORT"), (int(metrics_port), prefix + "METRICS_PORT")]
    ports.append((GATEWAY_HTTP_PORT, "AGENTMESH_GATEWAY_HTTP_PORT"))
    return ports


def _consul_double_wanted() -> bool:
    return DISCOVERY.discovery == "consul" and os.environ.get("AGENTMESH_CONSUL_DOUBLE") == "1"


async def _seed_knowledge(auth: DevAuth | None) -> int:
    async with grpc.aio.insecure_channel(f"{HOST}:{PORTS['gateway']}") as channel:
        rag = rag_service_pb2_grpc.RagServiceStub(channel)
        documents = [
            document_pb2.Document(
                document_id=path.stem,
                text=path.read_text(),
                content_type="text/markdown",
                metadata={"source": "examples"},
            )
            for path in sorted((REPO / "examples" / "knowledge").glob("*.md"))
        ]
        metadata = () if auth is None else (("authorization", f"Bearer {auth.token}"),)
        response = await rag.IngestDocuments(
            rag_service_pb2.IngestDocumentsRequest(documents=documents), timeout=10, metadata=metadata
        )
        return sum(r.outcome != rag_service_pb2.IngestResult.OUTCOME_UNCHANGED for r in response.results)


async def _wait_discovered(name: str, timeout_s: float = 30) -> None:
    """Consul mode: wait until `name` has a passing instance, so the next service finds it at once."""
    resolver = ConsulResolver(consul_address(DISCOVERY))
    watch = resolver.watch(name)
    try:
        async with asyncio.timeout(timeout_s):
            async for endpoints in watch:
                if endpoints:
                    return
    except TimeoutError:
        raise TimeoutError(
            f"{name} did not become passing in Consul at {DISCOVERY.consul_http_addr} within {timeout_s}s "
            "(is an agent running there? `AGENTMESH_CONSUL_DOUBLE=1 make run` starts the test double)"
        ) from None
    finally:
        await watch.aclose()  # type: ignore[attr-defined]
        await resolver.aclose()


def _start_consul_double() -> subprocess.Popen[bytes]:
    port = consul_address(DISCOVERY).port
    return subprocess.Popen(  # started before any service, like an agent already running on the host
        **tied_child([sys.executable, "-m", "tools.consul_double", "--port", str(port)]),
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}"},
        cwd=REPO,
    )


def _banner(auth: DevAuth | None, store: LocalStore, console: ConsoleStack) -> str:
    gateway = f"{HOST}:{PORTS['gateway']}"
    question = '{"question": "How long do refunds take?", "request_id": "try-1"}'
    bearer = "" if auth is None else f'-H "authorization: Bearer $(cat {auth.token_file})" '
    mcp = f"http://{HOST}:{GATEWAY_HTTP_PORT}{MCP_PATH}"
    card = f"http://{HOST}:{GATEWAY_HTTP_PORT}{AGENT_CARD_PATH}"
    tools_list = '{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
    return "\n".join(
        [
            "",
            "agentmesh is up:",
            *(f"  {name:<8} {HOST}:{port}" for name, port in PORTS.items()),
            f"  MCP      {mcp}  (Streamable HTTP, the same bearer token)",
            f"  A2A      {card}  (Agent Card; lf.a2a.v1.A2AService on {gateway})",
            f"  discovery: {DISCOVERY.discovery}"
            + (f" (Consul agent at {DISCOVERY.consul_http_addr})" if DISCOVERY.discovery == "consul" else ""),
            f"  {store.describe()}",
            *console.banner_lines(),
            "",
            "Try:",
            f"  .venv/bin/grpcurl -plaintext {gateway} list",
            f"  .venv/bin/grpcurl -plaintext {bearer}-d '{question}' {gateway} "
            "agentmesh.agent.v1.AgentService/CreateRun",
            f'  .venv/bin/grpcurl -plaintext {bearer}-d \'{{"run_id": "<run_id from above>"}}\' {gateway} '
            "agentmesh.agent.v1.AgentService/WatchRun",
            f"  curl -s {bearer}-H 'content-type: application/json' -H 'accept: application/json, text/event-stream' "
            f"-d '{tools_list}' {mcp}",
            *(
                []
                if auth is None
                else [f"  (auth is on: {auth.token_file} holds a 12-hour token for {DEV_SUBJECT} with every scope)"]
            ),
            "",
            "Ctrl-C stops everything.",
            "",
        ]
    )


async def main() -> int:
    auth = None if os.environ.get("AGENTMESH_DEV_AUTH") == "0" else ensure_dev_auth(REPO / "var" / "keys")
    console = ConsoleStack(
        [_observed(name) for name in PORTS],
        work_dir=REPO / "var" / "console",
        gateway=f"{HOST}:{PORTS['gateway']}",
        token_file=None if auth is None else auth.console_token_file,
    )
    try:
        ensure_free(listening_ports(console))  # before anything starts: a taken port is one line, not a traceback
        # Entered first and left last: the services start on it and drain before it stops.
        async with local_store(REPO) as store:
            return await _run(store, auth, console)
    except (RuntimeError, ValueError) as error:
        print(f"start-up failed: {error}", file=sys.stderr)
        return 1


async def _run(store: LocalStore, auth: DevAuth | None, console: ConsoleStack) -> int:
    processes: dict[str, subprocess.Popen[bytes]] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    consul_double = None
    try:
        if _consul_double_wanted():
            consul_double = _start_consul_double()
        # First, so the services' first spans and the first scrapes find them.
        await console.start()
        for name in ("rag", "agent", "gateway"):
            # Own process group: Ctrl-C reaches the launcher only, which then drains in order.
            processes[name] = subprocess.Popen(  # noqa: ASYNC220  # start-up is sequential by design
                **tied_child([sys.executable, "-m", f"services.{name}"]),  # even when the launcher is killed
                env=_env(name, auth, store),
                cwd=REPO,
            )
            await wait_serving(name, f"{HOST}:{PORTS[name]}", exit_code=processes[name].poll)
            if DISCOVERY.discovery == "consul":
                await _wait_discovered(name)
        changed = await _seed_knowledge(auth)
        seeded = f"(seeded {changed} example documents)\n" if changed else ""
        print(_banner(auth, store, console) + seeded, flush=True)
        while not stop.is_set():
            for name, process in processes.items():
                if process.poll() is not None:
                    print(f"{name} exited unexpectedly with code {process.returncode}", file=sys.stderr)
                    code = 1
                    stop.set()
            if console.exited() is not None:
                print(
                    f"the console exited unexpectedly; see {REPO / 'var' / 'console' / 'console.log'}", file=sys.stderr
                )
                code = 1
                stop.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
    except (RuntimeError, TimeoutError) as error:
        print(f"start-up failed: {error}", file=sys.stderr)
        code = 1
    finally:
        for name in ("gateway", "agent", "rag"):
            child = processes.get(name)
            if child is not None:
                await stop_child(child, within_s=30)
        await console.stop()
        if consul_double is not None:  # last: the services deregistered from it while draining
            await stop_child(consul_double, within_s=10)
    return code


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
