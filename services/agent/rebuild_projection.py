"""`python -m services.agent.rebuild_projection`: rebuild the run read model from the event log.

For a changed projection schema, or a read database that was lost or is suspect. Safe while
the service runs: live events applied meanwhile are absorbed (the view only moves forward).
"""

from __future__ import annotations

import asyncio
import json
import sys

from runtime.database import wait_until_reachable
from runtime.events.outbox import Outbox
from runtime.lifespan import Lifespan
from runtime.settings_errors import EXIT_INVALID_SETTING, InvalidSetting, load_settings
from services.agent.config import AgentSettings
from services.agent.projections import RunProjection
from services.agent.run_store import RunStore
from services.agent.server import open_databases


async def rebuild(settings: AgentSettings) -> dict[str, int]:
    """Replay the whole log into the projection; returns the per-state counts it ends with."""
    async with Lifespan.opening() as life:
        try:
            db, read_db = await open_databases(life, settings)
            await wait_until_reachable(db)
            await wait_until_reachable(read_db)
            store = RunStore(db, Outbox(db))
            projection = RunProjection(read_db)
            await store.create_schema()
            await projection.create_schema()
            await projection.rebuild(store)
            return {str(state): count for state, count in sorted((await projection.counts()).items())}
        finally:
            await life.aclose()


if __name__ == "__main__":
    try:
        settings = load_settings(AgentSettings)
    except InvalidSetting as error:
        print(error, file=sys.stderr)
        raise SystemExit(EXIT_INVALID_SETTING) from None
    print(json.dumps(asyncio.run(rebuild(settings)), indent=2))
