"""This process's instance id: unique among live replicas without any configuration, and the
same again after a restart on the same data dir (once the previous holder has closed its claim or died).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_SLOTS = 64


@dataclass
class InstanceId:
    """A claimed id; the slot file's lock is held until ``close`` (or the process ends)."""

    name: str
    _slot: IO[str] | None = field(default=None, repr=False)

    async def close(self) -> None:
        if self._slot is not None:
            self._slot.close()
            self._slot = None


def _generated() -> str:
    return f"{socket.gethostname()}-{secrets.token_hex(3)}"


def claim_instance_id(configured: str = "", *, data_dir: Path | None = None) -> InstanceId:
    """The configured id, else the first free slot's id in ``data_dir`` (written there on first use)."""
    if configured:
        return InstanceId(configured)
    if data_dir is None:
        return InstanceId(_generated())
    data_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(_SLOTS):
        handle = open(data_dir / f"instance-{slot}.id", "a+")  # noqa: SIM115 - closed by InstanceId.close
        try:
            # Per open file: a second claim in this process takes the next slot, as another process would.
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
        return InstanceId(name, handle)
    return InstanceId(_generated())  # more live processes on one data dir than slots: unique, not reused
