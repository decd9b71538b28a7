"""Loopback ports for servers a test starts and must name before they listen.

A port picked by binding to port 0 is free when it is picked, not when the server binds it a
second later; meanwhile any other bind to port 0 on the machine may be handed the same one. With
the suite split across workers (``make test`` runs pytest-xdist), the other worker's servers and
picks are such binds. So a test's ports come from a band of its worker's own, below the kernel's
ephemeral range (``net.ipv4.ip_local_port_range``), where no bind to port 0 and no outgoing
connection is ever given a port: only this worker picks there, one port after the other.

The bands pass over the ports ``make run MESH=envoy`` fixes (mesh/policy.yaml's local layout):
the mesh launcher test binds those, whichever worker runs it.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

from mesh.policy import load_policy
from runtime.ports import free_ports as kernel_picks
from tools.mesh_launcher import layout_ports

# The band's floor: well above the ports well-known services listen on.
BANDS_START = 10_000
# A worker's band narrower than this (a machine whose ephemeral range starts low) is not worth
# having: the picks fall back to the kernel's.
MIN_BAND = 1_000


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def worker_band(worker: str | None, workers: str | None, ephemeral_floor: int) -> range | None:
    """This worker's ports (``PYTEST_XDIST_WORKER`` "gw<n>" of ``PYTEST_XDIST_WORKER_COUNT``), or None
    when there is no room for one below ``ephemeral_floor``."""
    index = int(worker.removeprefix("gw")) if worker else 0
    count = int(workers) if workers else 1
    width = (ephemeral_floor - BANDS_START) // count
    if width < MIN_BAND:
        return None
    start = BANDS_START + index * width
    return range(start, start + width)


def port_is_free(port: int) -> bool:
    """Nothing holds ``port`` on loopback: no listener, no bound socket, and (the probe sets no
    SO_REUSEADDR) no connection in TIME_WAIT."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Band:
    """Picks ports one after the other through ``ports``, from a random place (so a run does not
    begin on ports the last one may have left in TIME_WAIT), passing over those in use."""

    def __init__(self, ports: range, *, reserved: frozenset[int] = frozenset()) -> None:
        self.ports = ports
        self._reserved = reserved
        self._next = random.randrange(len(ports))
        self._picking = threading.Lock()  # some tests pick from a thread

    def pick(self, count: int) -> list[int]:
        picked: list[int] = []
        with self._picking:
            for _ in range(len(self.ports)):
                port = self.ports[self._next % len(self.ports)]
                self._next += 1
                if port not in self._reserved and port_is_free(port):
                    picked.append(port)
                    if len(picked) == count:
                        return picked
        raise RuntimeError(f"no {count} free ports left in {self.ports.start}-{self.ports.stop - 1}")


_WORKER_BAND = worker_band(
    os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT"), _ephemeral_floor()
)
MESH_LAYOUT = frozenset(port for port, _ in layout_ports(load_policy()))
_PORTS = Band(_WORKER_BAND, reserved=MESH_LAYOUT) if _WORKER_BAND is not None else None


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing uses right now, for this test's servers."""
    return _PORTS.pick(count) if _PORTS is not None else kernel_picks(count)


def free_port() -> int:
    return free_ports(1)[0]
