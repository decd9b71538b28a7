"""Telling every process that listens on a channel that something committed, without slowing the
commits (``Announcer``), and being told (``Wakeup``).

A transaction that sends ``NOTIFY`` holds a cluster-wide lock from its NOTIFY until after its
commit (PostgreSQL queues notifications in commit order), so notifying from the writing
transactions would make every writer wait for each other's commit. An ``Announcer`` instead wakes
this process's listeners at once and owes the other processes one NOTIFY, sent by its own loop
in a statement of its own, for all the commits made since the last one.
"""

from __future__ import annotations

import asyncio
import contextlib

from runtime.database.interface import Database


class Announcer:
    def __init__(self, db: Database, channel: str) -> None:
        self._db = db
        self.channel = channel
        self._owed = asyncio.Event()

    def committed(self) -> None:
        """Call after a commit: this process's listeners now, the others' with the next NOTIFY."""
        self._db.wake(self.channel)
        self._owed.set()

    async def announce(self) -> None:
        """Forever: one NOTIFY for the commits since the last (a background loop; on SQLite there is
        nobody else to tell: processes sharing a file poll it)."""
        if self._db.dialect != "postgresql":
            return
        while True:
            await self._owed.wait()
            self._owed.clear()
            try:
                await self._db.execute("SELECT pg_notify(:channel, '')", {"channel": self.channel})
            except BaseException:
                self._owed.set()  # still owed, after the restart
                raise


class Wakeup:
    """The listening side: woken by this process's ``Announcer.committed`` at once, by the other
    processes' NOTIFY, and by each (re)connect of the listener (which may have missed some)."""

    def __init__(self, db: Database, channel: str) -> None:
        self._db = db
        self.channel = channel
        self._woken = asyncio.Event()
        self._listening = False

    def set(self) -> None:
        """Wake the waiter (for wake-ups of this process's own, such as a worker coming free)."""
        self._woken.set()

    async def wait(self, timeout_s: float | None = None) -> None:
        """Until woken or ``timeout_s`` passed; a wake-up that came while the caller worked returns at once.

        Listens from the first call on, once per process: a restarted loop keeps the subscription.
        """
        if not self._listening:
            self._listening = True
            await self._db.listen(self.channel, self._woken.set)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._woken.wait()
        self._woken.clear()
