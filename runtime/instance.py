"""This process's instance id: unique among live replicas without any configuration, and the
same again after a restart on the same data dir.

Saga leases, Redis consumer names and logs need a name per process. The host name alone is
not unique (two processes on one host, pods whose names repeat). So an id is the host name
plus a random suffix, kept in the data dir in a file this process holds an exclusive lock on
for its lifetime: a second process on the same data dir finds the lock taken and uses the
next slot (a new id), while a process restarted after a crash takes its old slot back, and
with it its sagas at once instead of after their leases expire. A configured id
(``AGENTMESH_<SERVICE>_INSTANCE_ID``) wins.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
from pathlib import Path
from typing import IO

# The slot files this process holds, by data dir: their locks live as long as the open file.
_held: dict[Path, tuple[IO[str], str]] = {}
_SLOTS = 64


def _generated() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


def instance_id(configured: str = "", *, data_dir: Path | None = None) -> str:
    if configured:
        return configured
    if data_dir is None:
        return _generated()
    data_dir = data_dir.resolve()
    if data_dir in _held:
        return _held[data_dir][1]
    data_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(_SLOTS):
        handle = open(data_dir / f"instance-{slot}.id", "a+")  # noqa: SIM115 - held open for the process lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handle.seek(0)
        name = handle.read().strip()
        if not name:
            name = _generated()
            handle.write(name)
            handle.flush()
            os.fsync(handle.fileno())
        _held[data_dir] = (handle, name)
        return name
    return _generated()  # more live processes on one data dir than slots: unique, not reused
