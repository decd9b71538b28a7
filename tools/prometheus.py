"""A real Prometheus for `make run` and the tests: a scrape config for every service, the process.

Debian's ``prometheus`` binary (``make debian-deps`` installs it) scrapes each instance's
metrics endpoint (``AGENTMESH_<SVC>_METRICS_PORT``); the console asks it with PromQL. Every
target carries the labels the console groups by: ``service``, ``version`` and ``grpc`` (the
instance's gRPC address, which is how discovery names it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from runtime.processes import stop_child, tied_child

JOB = "agentmesh"


@dataclass(frozen=True)
class ScrapeTarget:
    service: str
    version: str
    grpc: str  # host:port of the instance's gRPC server
    metrics: str  # host:port of its /metrics endpoint


def scrape_config(targets: Sequence[ScrapeTarget], *, interval_s: float = 2.0) -> str:
    """prometheus.yml scraping ``targets``; a short interval, since the console shows the last seconds."""
    config = {
        "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {"targets": [t.metrics], "labels": {"service": t.service, "version": t.version, "grpc": t.grpc}}
                    for t in targets
                ],
            }
        ],
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML, and needs no YAML library


def binary() -> str | None:
    return shutil.which("prometheus")


class PrometheusProcess:
    """``prometheus`` on loopback with its data in ``work_dir`` (started, waited for, stopped)."""

    def __init__(self, targets: Sequence[ScrapeTarget], *, work_dir: Path, port: int, interval_s: float = 2.0) -> None:
        self.work_dir = work_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._targets = list(targets)
        self._interval_s = interval_s
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self, *, within_s: float = 30) -> None:
        path = binary()
        if path is None:
            raise RuntimeError("prometheus is not installed: `make debian-deps` (apt-get install prometheus)")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "prometheus.yml"
        config.write_text(scrape_config(self._targets, interval_s=self._interval_s))
        log = (self.work_dir / "prometheus.log").open("ab")
        with log:
            self._process = subprocess.Popen(  # noqa: ASYNC220  # a long-lived child, waited for below
                **tied_child(
                    [
                        path,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self.work_dir / 'data'}",
                        "--storage.tsdb.retention.time=2h",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                    ]
                ),
                stdout=log,
                stderr=log,
            )
        await self._wait_ready(within_s)

    async def _wait_ready(self, within_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while loop.time() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(
                        f"prometheus exited with {self._process.returncode}; see {self.work_dir / 'prometheus.log'}"
                    )
                try:
                    async with session.get(f"{self.url}/-/ready") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"prometheus was not ready on {self.url} within {within_s}s")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await stop_child(process, within_s=15)
