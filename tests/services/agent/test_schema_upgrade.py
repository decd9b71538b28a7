"""Databases written by the build before per-run event streams keep working after the upgrade.

That build numbered every run's events in one global ``sequence``; schema version 2 gives each
run its own versions (1, 2, 3 … in the old order), keeps the old order as the feed's position,
and carries the read model's checkpoint over, on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from runtime.database import Database, Schema, open_database
from runtime.events.bus import Event
from runtime.events.outbox import Outbox
from services.agent import projections, run_store
from services.agent.model import EventType, Run, RunEvent
from services.agent.run_store import event_from_run_event
from services.agent.state_machine import RunState
from tests.services.agent.conftest import close_stores, open_stores


def _version_1(schema: Schema) -> Schema:
    return Schema(schema.component, schema.migrations[:1], legacy_table=schema.legacy_table)


async def _write_as_version_1(db: Database) -> dict[str, list[str]]:
    """Two runs whose events interleave in the global sequence, as the old build logged them."""
    await Outbox(db).create_schema()
    await db.migrate(_version_1(run_store.SCHEMA))
    now = time.time()
    # (global sequence, run, type, state after, run version after): old versions counted transitions only.
    history = [
        (1, "run_a", EventType.CREATED, RunState.IDLE, 1),
        (2, "run_a", EventType.STATE_CHANGED, RunState.PROCESSING, 2),
        (3, "run_b", EventType.CREATED, RunState.IDLE, 1),
        (4, "run_a", EventType.STEP_COMPLETED, RunState.PROCESSING, 2),
        (5, "run_b", EventType.STATE_CHANGED, RunState.PROCESSING, 2),
        (6, "run_a", EventType.STATE_CHANGED, RunState.COMPLETED, 3),
    ]
    logged: dict[str, list[str]] = {"run_a": [], "run_b": []}
    latest: dict[str, Run] = {}
    async with db.transaction() as tx:
        for sequence, run_id, event_type, state, version in history:
            run = Run(
                run_id=run_id,
                question=f"{run_id}?",
                state=state,
                version=version,
                create_time=now,
                update_time=now,
                creator="alice",
                request_id=f"request-{run_id}",
            )
            latest[run_id] = run
            event = event_from_run_event(
                RunEvent(sequence, f"event-{sequence}", run_id, event_type, f"cause {sequence}", now, run)
            )
            await tx.execute(
                "INSERT INTO run_events (sequence, event_id, run_id, event) VALUES (:s, :id, :run_id, :event)",
                {"s": sequence, "id": event.id, "run_id": run_id, "event": event.to_json()},
            )
            logged[run_id].append(event.id)
        for run in latest.values():
            await tx.execute(
                "INSERT INTO runs (run_id, creator, request_id, fingerprint, state, snapshot)"
                " VALUES (:run_id, 'alice', :request_id, :fingerprint, :state, :snapshot)",
                {
                    "run_id": run.run_id,
                    "request_id": run.request_id,
                    "fingerprint": run_store._fingerprint(run.question, {}, {}),
                    "state": str(run.state),
                    "snapshot": json.dumps(run.to_dict()),
                },
            )
    return logged


async def _read_model_at_version_1(db: Database, *, checkpoint: int) -> None:
    await db.migrate(_version_1(projections.SCHEMA))
    async with db.transaction() as tx:
        await tx.execute(
            "INSERT INTO projection_checkpoints (name, sequence) VALUES ('runs', :sequence)", {"sequence": checkpoint}
        )


async def test_runs_and_events_of_schema_version_1_are_found_after_the_upgrade(
    tmp_path: Path, database_url: str
) -> None:
    db = await open_database(database_url, sqlite_path=tmp_path / "agent.sqlite3", setting="DATABASE_URL")
    read_db = db
    if not database_url:
        read_db = await open_database("", sqlite_path=tmp_path / "agent-read.sqlite3", setting="READ_DATABASE_URL")
    logged = await _write_as_version_1(db)
    # The read model had applied the first five events.
    await _read_model_at_version_1(read_db, checkpoint=5)
    if read_db is not db:
        await read_db.close()
    await db.close()

    stores = await open_stores(tmp_path, database_url=database_url)
    try:
        a = await stores.runs.get("run_a")
        assert (a.state, a.version) == (RunState.COMPLETED, 4)
        for run_id, event_ids in logged.items():
            stream = await stores.runs.events(run_id)
            assert [e.event_id for e in stream] == event_ids
            assert [e.sequence for e in stream] == list(range(1, len(event_ids) + 1))
        assert [e.event_id for _, e in await stores.runs.feed()] == [f"event-{n}" for n in range(1, 7)]

        # The old request id still replays; the runs take new events after their versions.
        again, created = await stores.runs.create(question="run_b?", creator="alice", request_id="request-run_b")
        assert not created and again.run_id == "run_b"
        await stores.runs.transition("run_b", RunState.FAILED, cause="after the upgrade")
        assert [e.sequence for e in await stores.runs.events("run_b")] == [1, 2, 3]
        # A run made before its push configs were counted: its events say "not known" (-1), so the
        # push consumer still reads its configs.
        [(newest,)] = await stores.db.fetch_all("SELECT event FROM outbox ORDER BY seq DESC LIMIT 1")
        assert Event.from_json(newest).data["push_configs"] == -1

        # The read model resumes after the sixth event's predecessor: the sixth, then the new one.
        assert await stores.projection.catch_up(stores.runs) == 2
    finally:
        await close_stores(stores)


async def test_a_data_dir_of_the_build_before_versioned_migrations_keeps_working(tmp_path: Path) -> None:
    """What the build before versioned migrations left: version-1 tables, PRAGMA user_version = 1, runs."""
    db = await open_database("", sqlite_path=tmp_path / "agent.sqlite3", setting="DATABASE_URL")
    logged = await _write_as_version_1(db)
    await db.close()
    with sqlite3.connect(tmp_path / "agent.sqlite3") as old:
        old.execute("DROP TABLE schema_migrations")  # the old build had none
        assert old.execute("PRAGMA user_version").fetchone() == (1,)

    upgraded = await open_stores(tmp_path)
    try:
        assert [e.event_id for e in await upgraded.runs.events("run_a")] == logged["run_a"]
        again, created = await upgraded.runs.create(question="run_a?", creator="alice", request_id="request-run_a")
        assert (again, created) == (await upgraded.runs.get("run_a"), False)
    finally:
        await close_stores(upgraded)
