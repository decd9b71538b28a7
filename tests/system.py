"""Start agentmesh's real servers for tests: in-process on free loopback ports, or as processes.

In-process servers are the real `build()` plans run by the shared bootstrap, so what is tested is
what `python -m services.<name>` serves; subprocesses are used where a test needs signals or a
process boundary (drain, restart, SIGKILL).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.bootstrap import ManagedServer
from runtime.embedding import DEFAULT_MODEL_CACHE
from services.agent.config import AgentSettings
from services.agent.server import build as build_agent
from services.gateway.config import GatewaySettings
from services.gateway.server import build as build_gateway
from services.rag.config import RagSettings
from services.rag.server import build as build_rag
from tools.serving import wait_serving

REPO = Path(__file__).resolve().parents[1]
# The one directory the servers the tests start keep the sentence model's exported graph in (shared,
# as replicas on a host can share it): the default one, under the repository, which the tests that
# embed directly use too. Tests of the export itself use directories of their own.
MODEL_CACHE = REPO / DEFAULT_MODEL_CACHE
MODEL_CACHE_VARIABLES = ("AGENTMESH_AGENT_MODEL_CACHE_DIR", "AGENTMESH_RAG_MODEL_CACHE_DIR")


@dataclass
class System:
    rag: ManagedServer
    agent: ManagedServer
    gateway: ManagedServer

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def address(self, name: str) -> str:
        return f"127.0.0.1:{getattr(self, name).port}"


async def start_rag(data_dir: Path, **overrides: object) -> ManagedServer:
    settings = RagSettings(**{"port": 0, "data_dir": data_dir, "drain_delay_s": 0, "grace_period_s": 1, **overrides})  # type: ignore[arg-type]
    server = ManagedServer(await build_rag(settings))
    await server.start()
    return server


async def start_agent(data_dir: Path, rag_address: str, **overrides: object) -> ManagedServer:
    settings = AgentSettings(
        **{  # type: ignore[arg-type]
            "port": 0,
            "data_dir": data_dir,
            "rag_endpoints": [rag_address],
            "drain_delay_s": 0,
            "grace_period_s": 1,
            **overrides,
        }
    )
    server = ManagedServer(await build_agent(settings))
    await server.start()
    return server


async def start_gateway(backends: Mapping[str, list[str]], **overrides: object) -> ManagedServer:
    settings = GatewaySettings(
        **{"port": 0, "backends": dict(backends), "drain_delay_s": 0, "grace_period_s": 1, **overrides}  # type: ignore[arg-type]
    )
    server = ManagedServer(await build_gateway(settings))
    await server.start()
    return server


@asynccontextmanager
async def running_system(data_dir: Path) -> AsyncIterator[System]:
    rag = await start_rag(data_dir)
    agent = await start_agent(data_dir, f"127.0.0.1:{rag.port}")
    gateway = await start_gateway({"agent": [f"127.0.0.1:{agent.port}"], "rag": [f"127.0.0.1:{rag.port}"]})
    try:
        yield System(rag=rag, agent=agent, gateway=gateway)
    finally:
        for server in (gateway, agent, rag):
            await server.stop()


@dataclass
class ServiceProcess:
    """A service run as `python -m services.<name>`, its port read from the port file."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self, timeout_s: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def spawn(module: str, env: Mapping[str, str], work_dir: Path, *, timeout_s: float = 20) -> ServiceProcess:
    """Start `python -m module` with `env` (which must set its port file) and wait for the port."""
    port_file = Path(next(v for k, v in env.items() if k.endswith("_PORT_FILE")))
    port_file.unlink(missing_ok=True)
    log_path = work_dir / f"{module.replace('.', '_')}-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}", **env}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", module], cwd=work_dir, env=full_env, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return ServiceProcess(process, int(port_file.read_text()), log_path)
        if process.poll() is not None:
            raise RuntimeError(f"{module} exited with {process.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise TimeoutError(f"{module} did not start within {timeout_s}s:\n{log_path.read_text()}")


async def spawn_serving(
    module: str, env: Mapping[str, str], work_dir: Path, *, timeout_s: float = 30
) -> ServiceProcess:
    """`spawn`, then wait until the service reports SERVING.

    The port file is written when the server listens, before its start-up hooks (a database
    waited for, recovery) are done; until then its calls are UNAVAILABLE, so a test that calls
    the service at once waits for this.
    """
    service = await asyncio.to_thread(spawn, module, env, work_dir, timeout_s=timeout_s)
    try:
        await wait_serving(module, service.address, exit_code=service.process.poll, within=timeout_s)
    except BaseException:
        service.kill()
        raise
    return service


async def health_status(address: str, service: str = "", timeout_s: float = 2) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def wait_until(predicate_coro: object, timeout_s: float = 10, interval_s: float = 0.05) -> None:
    """Poll an async predicate until it is true (a condition, never a sleep standing in for one)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await predicate_coro():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval_s)
