"""A Redis consumer that applies its first event and then dies by SIGKILL before acknowledging it.

Run as ``python -m tests.runtime.events.crashing_consumer REDIS_URL DB_PATH STREAM GROUP``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from runtime.database.sqlite import SQLiteDatabase as Database
from runtime.events.bus import Event
from runtime.events.redis_streams import RedisStreamsEventBus
from tests.runtime.events.ledger import Ledger


async def main(redis_url: str, db_path: str, stream: str, group: str) -> None:
    db = await Database.open(db_path)
    ledger = Ledger(db, consumer=group)
    bus = RedisStreamsEventBus.from_url(redis_url, batch_size=100)

    async def apply_then_die(event: Event) -> None:
        await ledger.apply(event)
        print(f"applied {event.id}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    await bus.subscribe(stream, group=group, consumer="doomed", handler=apply_then_die)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
