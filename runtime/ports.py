"""A port already taken, said in one line: the port, the setting that moves it, who holds it.

The launchers check every port before they start anything (:func:`ensure_free`); a service or
the console that cannot listen says the same (:func:`taken_message`). A port left taken is most
often held by a process of an earlier run that outlived its launcher: the line says so when the
holder is one of agentmesh's own, rather than a traceback in a log file.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import socket
from collections.abc import Iterable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]  # the repository the launchers run from
# What a launcher runs with ``python -m``: a holder running one of them is ours.
OUR_MODULES = ("services.", "console", "tools.consul_double", "tools.launcher", "tools.mesh_launcher")


class PortTaken(RuntimeError):
    """A port a launcher needs is in use; the message is the one line to show."""


def ensure_free(ports: Iterable[tuple[int, str]], host: str = "127.0.0.1") -> None:
    """Raise :class:`PortTaken` for the first ``(port, setting)`` something already listens on."""
    for port, setting in ports:
        if port and _taken(host, port):
            raise PortTaken(taken_message(port, setting))


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports nothing listens on at this moment, as the kernel picks them (for
    servers started next). All probes stay open until every port is picked, so none is handed twice."""
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket()) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [int(probe.getsockname()[1]) for probe in probes]


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def _taken(host: str, port: int) -> bool:
    # Without SO_REUSEPORT, so a gRPC server's socket (which sets it) counts; SO_REUSEADDR, so a
    # connection of the last run still in TIME_WAIT does not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def taken_message(port: int, setting: str) -> str:
    message = f"port {port} is already taken ({setting} moves it)"
    holder = port_holder(port)
    if holder is None:
        return message
    with contextlib.suppress(psutil.Error):
        command = " ".join(holder.cmdline()) or holder.name()
        if _ours(holder):
            return (
                f"{message}: pid {holder.pid} holds it, {command!r}, left running by an earlier agentmesh run; "
                f"stop it (kill {holder.pid}) and start again"
            )
        return f"{message}: pid {holder.pid} holds it, {command!r}"
    return message


def port_holder(port: int) -> psutil.Process | None:
    """The process listening on ``port``, when this user may see it."""
    with contextlib.suppress(psutil.Error):
        for connection in psutil.net_connections(kind="tcp"):
            address = connection.laddr
            if connection.status == psutil.CONN_LISTEN and address and address.port == port and connection.pid:
                return psutil.Process(connection.pid)
    return None


def _ours(process: psutil.Process) -> bool:
    """Started by one of our launchers: one of our modules, or a program run on files of this repository."""
    argv = process.cmdline()
    if any(module == "-m" and run.startswith(OUR_MODULES) for module, run in itertools.pairwise(argv)):
        return True
    return any(str(REPO) in argument for argument in argv[1:])
