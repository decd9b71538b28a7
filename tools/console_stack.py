"""The console and its Prometheus, as `make run` and `make run MESH=envoy` start them.

Both launchers call this the same way: the environment that makes a service export metrics and
traces (``observed_env``), then ``ConsoleStack`` around the services' lifetime: Prometheus and the
console start first (so the first spans and scrapes find them), and stop last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from runtime.processes import stop_child, tied_child
from runtime.settings_errors import EXIT_INVALID_SETTING
from tools.prometheus import PrometheusProcess, ScrapeTarget, binary

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def _port(variable: str, default: int) -> int:
    """A port from the environment; a bad one stops the launcher with one line, as bad settings do."""
    raw = os.environ.get(variable, str(default)).strip()
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        print(f"{variable}: expected a port from 1 to 65535", file=sys.stderr)
        raise SystemExit(EXIT_INVALID_SETTING)
    return int(raw)


CONSOLE_PORT = _port("AGENTMESH_CONSOLE_PORT", 8080)
OTLP_PORT = _port("AGENTMESH_CONSOLE_OTLP_PORT", 4317)
PROMETHEUS_PORT = _port("AGENTMESH_PROMETHEUS_PORT", 9090)
# Each instance's metrics endpoint sits at a fixed offset below its gRPC port (50051 -> 9451,
# 50072 -> 9472): distinct for every instance of both layouts, and easy to find by hand.
METRICS_PORT_OFFSET = 40600


@dataclass(frozen=True)
class Observed:
    service: str
    version: str
    grpc_port: int

    @property
    def grpc(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def metrics_port(self) -> int:
        return self.grpc_port - METRICS_PORT_OFFSET


def observed_env(instance: Observed) -> dict[str, str]:
    """What makes one service instance export metrics to Prometheus and spans to the console."""
    prefix = f"AGENTMESH_{instance.service.upper()}_"
    return {
        prefix + "METRICS_PORT": os.environ.get(prefix + "METRICS_PORT", str(instance.metrics_port)),
        prefix + "OTLP_ENDPOINT": os.environ.get(prefix + "OTLP_ENDPOINT", f"http://{HOST}:{OTLP_PORT}"),
        # Spans reach the console within half a second (the SDK's default batches for five).
        "OTEL_BSP_SCHEDULE_DELAY": os.environ.get("OTEL_BSP_SCHEDULE_DELAY", "500"),
    }


class ConsoleStack:
    """Prometheus (when installed) and ``python -m console``, both on loopback, logs in ``work_dir``."""

    def __init__(
        self,
        instances: Sequence[Observed],
        *,
        work_dir: Path,
        gateway: str,
        token_file: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self._instances = list(instances)
        self._work_dir = work_dir
        self._gateway = gateway
        self._token_file = token_file
        self._extra_env = dict(extra_env or {})
        self.prometheus: PrometheusProcess | None = None
        self._console: subprocess.Popen[bytes] | None = None
        self.notes: list[str] = []
        self.url = f"http://{HOST}:{CONSOLE_PORT}"

    def ports(self) -> list[tuple[int, str]]:
        """The ports this stack listens on, each with the setting that moves it (for ``tools.ports``)."""
        ports = [(CONSOLE_PORT, "AGENTMESH_CONSOLE_PORT"), (OTLP_PORT, "AGENTMESH_CONSOLE_OTLP_PORT")]
        if binary() is not None:
            ports.append((PROMETHEUS_PORT, "AGENTMESH_PROMETHEUS_PORT"))
        return ports

    async def start(self) -> None:
        self._work_dir.mkdir(parents=True, exist_ok=True)
        if binary() is None:
            self.notes.append("Prometheus is not installed (`make debian-deps`): the console shows no rates")
        else:
            targets = [ScrapeTarget(i.service, i.version, i.grpc, f"{HOST}:{i.metrics_port}") for i in self._instances]
            self.prometheus = PrometheusProcess(targets, work_dir=self._work_dir / "prometheus", port=PROMETHEUS_PORT)
            await self.prometheus.start()
        port_file = self._work_dir / "console.ports"
        port_file.unlink(missing_ok=True)
        targets_by_service: dict[str, list[str]] = {}
        for i in self._instances:
            targets_by_service.setdefault(i.service, []).append(i.grpc)
        env = {
            **os.environ,
            "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}",
            "AGENTMESH_CONSOLE_PORT": str(CONSOLE_PORT),
            "AGENTMESH_CONSOLE_OTLP_PORT": str(OTLP_PORT),
            "AGENTMESH_CONSOLE_PROMETHEUS_URL": f"http://{HOST}:{PROMETHEUS_PORT}",
            "AGENTMESH_CONSOLE_GATEWAY": self._gateway,
            "AGENTMESH_CONSOLE_TARGETS": json.dumps(targets_by_service),
            "AGENTMESH_CONSOLE_VERSIONS": json.dumps({i.grpc: i.version for i in self._instances}),
            "AGENTMESH_CONSOLE_PORT_FILE": str(port_file),
            **({"AGENTMESH_CONSOLE_GATEWAY_TOKEN_FILE": str(self._token_file)} if self._token_file else {}),
            **self._extra_env,
        }
        log = (self._work_dir / "console.log").open("ab")
        with log:
            self._console = subprocess.Popen(  # noqa: ASYNC220  # a long-lived child, waited for below
                **tied_child([sys.executable, "-m", "console"]),
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=log,
            )
        await self._wait_ready(port_file)

    async def _wait_ready(self, port_file: Path, within_s: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while loop.time() < deadline:
                assert self._console is not None
                if self._console.poll() is not None:
                    raise RuntimeError(
                        f"the console exited with {self._console.returncode}; see {self._work_dir / 'console.log'}"
                    )
                if await asyncio.to_thread(port_file.exists):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"{self.url}/healthz") as response:
                            if response.status == 200:
                                return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"the console did not answer on {self.url} within {within_s}s")

    def exited(self) -> int | None:
        return None if self._console is None else self._console.poll()

    def banner_lines(self) -> list[str]:
        lines = [f"  console  {self.url}   (topology, golden signals, traces, runs)"]
        if self.prometheus is not None:
            lines.append(f"  prometheus {self.prometheus.url}")
        return lines + [f"  ({note})" for note in self.notes]

    async def stop(self) -> None:
        console, self._console = self._console, None
        if console is not None:
            await stop_child(console, within_s=10)
        if self.prometheus is not None:
            await self.prometheus.stop()
