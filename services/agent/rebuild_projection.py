"""`python -m services.agent.rebuild_projection`: rebuild the run read model from the event log.

For a changed projection schema, or a read database that was lost or is suspect. Safe while
the service runs: live events applied meanwhile are absorbed (the view only moves forward).
"""

from __future__ import annotations

import asyncio
import json
import sys

from runtime.events.outbox import Outbox
from runtime.settings_errors import EXIT_INVALID_SETTING, InvalidSetting, load_settings
from runtime.sqlite import Database
from services.agent.config import AgentSettings
from services.agent.projections import RunProjection
from services.agent.run_store import RunStore


async def rebuild(settings: AgentSettings) -> dict[str, int]:
    """Replay the whole log into the projection; returns the per-state counts it ends with."""
    db = await Database.open(settings.write_db_path)
    read_db = await Database.open(settings.read_db_path)
    try:
        store = RunStore(db, Outbox(db))
        projection = RunProjection(read_db)
        await store.create_schema()
        await projection.create_schema()
        await projection.rebuild(store)
        return {str(state): count for state, count in sorted((await projection.counts()).items())}
    finally:
        await read_db.close()
        await db.close()


if __name__ == "__main__":
    try:
        settings = load_settings(AgentSettings)
    except InvalidSetting as error:
        print(error, file=sys.stderr)
        raise SystemExit(EXIT_INVALID_SETTING) from None
    print(json.dumps(asyncio.run(rebuild(settings)), indent=2))
