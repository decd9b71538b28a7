"""A throwaway local PostgreSQL cluster (Debian postgresql-15) for tests and `make run STORE=postgres`.

`python -m tools.postgres_local start DIR` initialises DIR (once) and starts the server on a free
loopback port, printing its URL; `stop DIR` stops it; `guard DIR` stops it when its parent dies.
The server runs as the Debian package's `postgres` user (PostgreSQL refuses root), so DIR and every
directory above it must be traversable by that user; its socket lives in DIR, never in /var/run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime.ports import free_port
from runtime.processes import tied_child

BIN_DIR = Path(os.environ.get("AGENTMESH_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "agentmesh"
DEFAULT_DATABASE = "agentmesh"
# Throwaway clusters trade durability for speed: a crash of the machine loses the data, a crash
# of the server does not.
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200")
# pg_ctl's shutdown modes as the signals the postmaster takes for them.
_SHUTDOWN_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class PostgresNotInstalled(RuntimeError):
    pass


def installed() -> bool:
    return (BIN_DIR / "initdb").exists() and (BIN_DIR / "pg_ctl").exists()


@dataclass
class LocalPostgres:
    """One cluster in ``root`` (data, socket, log), listening on 127.0.0.1:``port``."""

    root: Path
    port: int = 0
    # The server started by spawn(), when this process runs it in the foreground.
    _server: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        """Create the cluster unless ``root`` already holds one."""
        if not installed():
            raise PostgresNotInstalled(f"PostgreSQL 15 is not installed ({BIN_DIR}/initdb missing): make debian-deps")
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            _let_postgres_through(self.root)
        if (self.data_dir / "PG_VERSION").exists():
            return
        try:
            self._as_postgres(
                str(BIN_DIR / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            )
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"initdb failed in {self.root}: {error.stderr.strip()}") from error

    def start(self) -> str:
        """Start the server (initialising first if needed) and return the default database's URL.

        ``pg_ctl`` detaches the server: it outlives this process until :meth:`stop`. A launcher
        whose server must die with it uses :meth:`spawn` instead.
        """
        self.init()
        if not self.port:
            self.port = free_port()
        result = self._as_postgres(
            str(BIN_DIR / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            " ".join(self._server_options()),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start in {self.root}: {result.stderr.strip()}\n{self._log_tail()}")
        self.create_database(DEFAULT_DATABASE, if_missing=True)
        return self.url()

    def spawn(self) -> None:
        """Run the server in the foreground as this process's child, which dies with this process.

        However the caller dies (SIGKILL included), the kernel sends the server SIGINT, a fast
        shutdown: no server is left holding ``root`` for the next run. Call it from the main thread
        (the signal follows the thread that forks), after :meth:`init`; then :meth:`wait_ready`.
        """
        if not self.port:
            self.port = free_port()
        command = [str(BIN_DIR / "postgres"), "-D", str(self.data_dir), *self._server_options()]
        with self.log_file.open("ab") as log:
            self._server = subprocess.Popen(
                # SIGINT: a fast shutdown. PostgreSQL refuses to run as root.
                **tied_child(command, signal.SIGINT, user="postgres" if os.geteuid() == 0 else None),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def wait_ready(self, within_s: float = 60) -> str:
        """Wait until the spawned server accepts connections; return the default database's URL."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self._server is not None and self._server.poll() is not None:
                raise RuntimeError(
                    f"PostgreSQL in {self.root} exited with {self._server.returncode}:\n{self._log_tail()}"
                )
            ready = subprocess.run(
                [str(BIN_DIR / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"], check=False
            )
            if ready.returncode == 0:
                self.create_database(DEFAULT_DATABASE, if_missing=True)
                return self.url()
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL in {self.root} did not accept connections within {within_s}s")

    def _server_options(self) -> list[str]:
        return [
            *("-p", str(self.port)),
            *("-c", "listen_addresses=127.0.0.1"),
            *("-k", str(self.root)),
            *(option for setting in _FAST_SETTINGS for option in ("-c", setting)),
        ]

    def _log_tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients, roll back; ``immediate``: as after a crash)."""
        server, self._server = self._server, None
        if server is not None:
            server.send_signal(_SHUTDOWN_SIGNALS[mode])
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
            return
        if not (self.data_dir / "postmaster.pid").exists():
            return
        result = self._as_postgres(
            str(BIN_DIR / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop", check=False
        )
        if result.returncode != 0 and (self.data_dir / "postmaster.pid").exists():
            raise RuntimeError(
                f"PostgreSQL in {self.root} did not stop: {result.stdout.strip()} {result.stderr.strip()}"
            )

    def running(self) -> bool:
        status = self._as_postgres(str(BIN_DIR / "pg_ctl"), "-D", str(self.data_dir), "status", check=False)
        return status.returncode == 0

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser (psql is a client: it needs no user switch)."""
        argv = [str(BIN_DIR / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database]
        result = subprocess.run(
            [*argv, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r} on port {self.port} failed: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str, *, if_missing: bool = False) -> str:
        if if_missing and self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").strip():
            return self.url(name)
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _let_postgres_through(root: Path) -> None:
    """Give "others" search (x, not read) permission on the directories above ``root``.

    Temporary directories are often 0700 root-owned; the postgres user must reach its data
    directory through them.
    """
    for parent in root.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def guard(cluster: LocalPostgres, *, remove: Path | None) -> None:
    """Wait for SIGTERM or SIGINT, then stop ``cluster`` as after a crash and delete ``remove``.

    For a cluster started with ``pg_ctl`` (detached): run as a :func:`runtime.processes.tied_child`
    of the process that started it, this stops the server when that process dies, however it dies.
    Prints ``guarding`` once the signals are caught.
    """
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    print("guarding", flush=True)
    signal.sigwait(signals)
    cluster.stop(mode="immediate")
    if remove is not None:
        shutil.rmtree(remove, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.postgres_local", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status", "guard"])
    parser.add_argument("root", type=Path, help="cluster directory (created on first start)")
    parser.add_argument("--port", type=int, default=0, help="loopback port (default: a free one)")
    parser.add_argument("--remove", type=Path, help="guard: the directory to delete once the cluster is stopped")
    args = parser.parse_args(argv)
    cluster = LocalPostgres(args.root.resolve(), args.port)
    try:
        if args.command == "start":
            print(cluster.start())
        elif args.command == "stop":
            cluster.stop()
        elif args.command == "guard":
            guard(cluster, remove=args.remove)
        else:
            return 0 if cluster.running() else 3
    except (PostgresNotInstalled, RuntimeError) as error:
        print(f"postgres_local: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
