"""The read side: a run view and per-state counts, built only from run events.

Fed one way: from the event log's global feed by cursor (``catch_up``), woken by each commit
(this replica's at once, other replicas' by their NOTIFY) and polling as a safety net
(``follow``). Commits arriving together are applied as one batch, in one transaction, so the
read side costs a few statements per batch rather than a transaction per event. The apply is
idempotent: each event id is applied once (the ledger commits with the view), and a run's row
only moves forward in ``version``, so an event read twice (one replica follows, under a lease,
but two may for a moment: see ``follow``) cannot roll it back or double-count it. ``rebuild``
drops the view and replays the whole log, which yields exactly the live view. (The event bus
still carries the events to their other consumers; feeding the view from it as well applied
every event twice.)

Replicas sharing a database share one view without a lock shared by all runs: a transaction
applying a run's event takes that run's lock (``agent.run_view:<run_id>``; runs in sorted order,
then count rows in sorted order, so two appliers never deadlock), so two replicas never
interleave a read-then-write of one row. Queries read the view as it is: they never wait for
it to catch up (GetRun reads the run's own row in the write model instead).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from runtime.database import Database, Migration, Schema, Transaction, in_list
from runtime.events.bus import Event
from runtime.events.dedup import ProcessedEvents
from services.agent.model import Run, RunEvent
from services.agent.run_store import FeedPosition, RunStore, run_event_from_event
from services.agent.state_machine import RunState

log = structlog.get_logger(__name__)

_V1 = """
CREATE TABLE IF NOT EXISTS run_view (
    run_id      TEXT PRIMARY KEY,
    create_time {real} NOT NULL,
    state       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    snapshot    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_view_newest ON run_view (create_time DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS run_view_by_state ON run_view (state, create_time DESC, run_id DESC);
CREATE TABLE IF NOT EXISTS run_state_counts (
    state TEXT PRIMARY KEY,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    name     TEXT PRIMARY KEY,
    sequence BIGINT NOT NULL
);
"""
# Version 2: the feed's cursor is (xid, position); a version-1 checkpoint N is (0, N), since the
# events logged before the migration carry xid 0 and their old sequence as position.
_V2 = "ALTER TABLE projection_checkpoints ADD COLUMN xid BIGINT NOT NULL DEFAULT 0;"
# Version 3: which replica follows the feed (``follow``), as a lease.
_V3 = """
CREATE TABLE IF NOT EXISTS projection_leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  {real} NOT NULL
);
"""
# Version 4: the lease names the holder's instance too, so a restarted replica takes its own back
# at once. Leases taken before it name none ('') and are simply left to expire.
_V4 = "ALTER TABLE projection_leases ADD COLUMN instance TEXT NOT NULL DEFAULT '';"
SCHEMA = Schema(
    "agent.run_view",
    (
        Migration(1, sqlite=_V1.format(real="REAL"), postgresql=_V1.format(real="DOUBLE PRECISION")),
        Migration(2, sqlite=_V2, postgresql=_V2),
        Migration(3, sqlite=_V3.format(real="REAL"), postgresql=_V3.format(real="DOUBLE PRECISION")),
        Migration(4, sqlite=_V4, postgresql=_V4),
    ),
)


class InvalidPageToken(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PageToken:
    """Where the next page starts (keyset pagination), bound to the filter it was issued for."""

    create_time: float
    run_id: str
    state: str

    def encode(self) -> str:
        raw = json.dumps([self.create_time, self.run_id, self.state]).encode()
        return base64.urlsafe_b64encode(raw).decode()

    @classmethod
    def decode(cls, token: str, *, state: str) -> PageToken:
        try:
            create_time, run_id, token_state = json.loads(base64.urlsafe_b64decode(token.encode()))
            decoded = cls(float(create_time), str(run_id), str(token_state))
        except (ValueError, TypeError, binascii.Error) as error:
            raise InvalidPageToken("page_token is not a token returned by ListRuns") from error
        if decoded.state != state:
            raise InvalidPageToken("page_token was issued for a different state filter")
        return decoded


class RunProjection:
    NAME = "runs"

    def __init__(self, db: Database, *, instance: str = "") -> None:
        """``instance``: the replica's stable id (``runtime.instance``), so that once restarted it
        takes back the lease its previous process left (see ``follow``); empty: none."""
        self._db = db
        self._processed = ProcessedEvents(db, consumer=f"projection:{self.NAME}")
        # This process's name in the lease (the pid: which process, to a person; the nonce: unique
        # even where two processes share an instance id by mistake), and its replica's.
        self.holder = f"{os.getpid()}.{uuid.uuid4().hex}"
        self._instance = instance
        # Until this process's first try for the lease, it may take one its instance holds.
        self._first_try = True
        # Until when (monotonic) it leads without renewing, and when it tries again if it does not.
        self._leads_until = 0.0
        self._next_try = 0.0

    async def create_schema(self) -> None:
        await self._processed.create_schema()
        await self._db.migrate(SCHEMA)

    # -- building ----------------------------------------------------------------------

    async def apply(self, event: Event) -> None:
        """Apply one run event, at most once (in any order, any number of times: the view converges)."""
        await self._apply_batch([run_event_from_event(event)])

    async def catch_up(self, store: RunStore, *, batch_size: int = 500) -> int:
        """Apply every logged event after the cursor, one transaction per batch; returns how many were read."""
        read = 0
        while True:
            cursor = await self.position()
            entries = await store.feed(after=cursor, limit=batch_size)
            if not entries:
                return read
            await self._apply_batch([event for _, event in entries], position=entries[-1][0])
            read += len(entries)

    async def follow(self, store: RunStore, *, interval_s: float, gather_s: float = 0.02) -> None:
        """Forever: catch up after each commit (waiting ``gather_s`` for the commits arriving with it,
        applied in the same batch), and at least every ``interval_s``.

        The poll also picks up what a wake could not see yet: on PostgreSQL the feed holds back an
        event until every transaction older than its own has ended.

        One replica follows at a time: another's reads would only find what it applied. It holds a
        lease of ``3 * interval_s``, renewed every ``interval_s``; the others try to take it at that
        pace, so a follower that died is replaced within about ``3 * interval_s`` (the view waits
        meanwhile, it is never wrong). Two followers at once (a stalled leader, clocks far apart)
        cost reads only: the apply is idempotent, and the cursor only moves forward.

        A replica restarted under the same instance id takes the lease its previous process left
        at its first try, without waiting for it to expire. That process is normally dead (a
        claimed id's slot is locked for its process's lifetime); if it is alive (one id configured
        for two processes by mistake), it loses its next renewal and stands by, so the two follow
        together for one interval at most, and never take the lease from each other again.
        """
        while True:
            committed = store.next_commit()  # taken before reading, so no commit slips between
            if await self._leading(interval_s):
                await self.catch_up(store)
            try:
                async with asyncio.timeout(interval_s):
                    await committed.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(gather_s)

    async def _leading(self, interval_s: float) -> bool:
        """Whether this follower holds the lease (taking or renewing it when due: one statement)."""
        now = time.monotonic()
        if now < self._leads_until:
            return True
        if now < self._next_try:
            return False
        wall = time.time()
        won = await self._db.execute(
            "INSERT INTO projection_leases (name, holder, instance, until) VALUES (:name, :holder, :instance, :until)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, instance = excluded.instance,"
            " until = excluded.until"
            " WHERE projection_leases.holder = excluded.holder OR projection_leases.until < :now"
            " OR projection_leases.instance = :predecessor"
            " RETURNING holder",
            {
                "name": self.NAME,
                "holder": self.holder,
                "instance": self._instance,
                "until": wall + 3 * interval_s,
                "now": wall,
                # NULL matches no row: after the first try, only an expired lease is taken.
                "predecessor": self._instance if self._first_try and self._instance else None,
            },
        )
        self._first_try = False
        if won.rows:
            self._leads_until = now + interval_s
            return True
        self._leads_until, self._next_try = 0.0, now + interval_s
        return False

    async def rebuild(self, store: RunStore) -> int:
        """Forget everything and replay the whole event log."""
        async with self._db.transaction() as tx:
            for table in ("run_view", "run_state_counts"):
                await tx.execute(f"DELETE FROM {table}")
            await tx.execute("DELETE FROM projection_checkpoints WHERE name = :name", {"name": self.NAME})
            await self._processed.forget_all(tx)
        return await self.catch_up(store)

    async def prune_ledger(self, *, older_than: float) -> int:
        """Bound the event-id ledger; older duplicates are still absorbed by the version check."""
        return await self._processed.prune(older_than=older_than)

    async def position(self) -> FeedPosition:
        """The feed cursor: every event at or before it has been applied."""
        row = await self._db.fetch_one(
            "SELECT xid, sequence FROM projection_checkpoints WHERE name = :name", {"name": self.NAME}
        )
        return FeedPosition(int(row[0]), int(row[1])) if row else FeedPosition()

    async def _apply_batch(self, events: Sequence[RunEvent], *, position: FeedPosition | None = None) -> None:
        """Apply ``events`` in one transaction: per run, only its newest unapplied version matters."""
        # The ones the ledger already holds (applied from the bus) cost nothing more.
        known = await self._processed.applied([e.event_id for e in events])
        fresh = [e for e in events if e.event_id not in known]
        async with self._db.transaction() as tx:
            claimed = await self._processed.claim_all(tx, [e.event_id for e in fresh])
            newest: dict[str, Run] = {}
            for event in fresh:
                held = newest.get(event.run_id)
                if event.event_id in claimed and (held is None or event.run.version > held.version):
                    newest[event.run_id] = event.run
            # Locks in one order everywhere (claims, runs, then count rows): appliers wait, never deadlock.
            await tx.lock_all([f"agent.run_view:{run_id}" for run_id in sorted(newest)])
            counts: Counter[str] = Counter()
            changed: list[Run] = []
            for run_id, current in (await self._current(tx, sorted(newest))).items():
                run = newest[run_id]
                if current is not None and current[0] >= run.version:
                    continue  # stale or already-applied version: the row already reflects it
                changed.append(run)
                if current is None or current[1] != run.state:
                    if current is not None:
                        counts[current[1]] -= 1
                    counts[str(run.state)] += 1
            await self._upsert(tx, changed)
            for state in sorted(counts):
                if counts[state]:
                    await self._count(tx, state, counts[state])
            if position is not None:
                await self._set_position(tx, position)

    @staticmethod
    async def _current(tx: Transaction, run_ids: list[str]) -> dict[str, tuple[int, str] | None]:
        """Each run's (version, state) in the view, None for a run not in it yet."""
        current: dict[str, tuple[int, str] | None] = dict.fromkeys(run_ids)
        if not run_ids:
            return current
        if tx.dialect == "postgresql":
            # One array parameter: one statement text (prepared once) whatever the batch's size.
            found = await tx.execute(
                "SELECT run_id, version, state FROM run_view WHERE run_id = ANY(CAST(:ids AS TEXT[]))", {"ids": run_ids}
            )
        else:
            wanted, params = in_list("r", run_ids)
            found = await tx.execute(f"SELECT run_id, version, state FROM run_view WHERE run_id IN {wanted}", params)
        current.update({row[0]: (int(row[1]), row[2]) for row in found.rows})
        return current

    async def _set_position(self, tx: Transaction, position: FeedPosition) -> None:
        await tx.execute(
            "INSERT INTO projection_checkpoints (name, xid, sequence) VALUES (:name, :xid, :position)"
            " ON CONFLICT (name) DO UPDATE SET xid = excluded.xid, sequence = excluded.sequence"
            " WHERE (excluded.xid, excluded.sequence) > (projection_checkpoints.xid, projection_checkpoints.sequence)",
            {"name": self.NAME, "xid": position.xid, "position": position.position},
        )

    @staticmethod
    async def _upsert(tx: Transaction, runs: Sequence[Run]) -> None:
        """Write each run's row (one statement on PostgreSQL, one per run on SQLite)."""
        rows = [
            {
                "run_id": run.run_id,
                "create_time": run.create_time,
                "state": str(run.state),
                "version": run.version,
                "snapshot": json.dumps(run.to_dict()),
            }
            for run in runs
        ]
        on_conflict = (
            " ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, version = excluded.version,"
            " snapshot = excluded.snapshot"
        )
        if tx.dialect == "postgresql":
            if rows:
                await tx.execute(
                    "INSERT INTO run_view (run_id, create_time, state, version, snapshot)"
                    " SELECT * FROM unnest(CAST(:run_id AS TEXT[]), CAST(:create_time AS DOUBLE PRECISION[]),"
                    " CAST(:state AS TEXT[]), CAST(:version AS INTEGER[]), CAST(:snapshot AS TEXT[]))" + on_conflict,
                    {column: [row[column] for row in rows] for column in rows[0]},
                )
            return
        for row in rows:
            await tx.execute(
                "INSERT INTO run_view (run_id, create_time, state, version, snapshot)"
                " VALUES (:run_id, :create_time, :state, :version, :snapshot)" + on_conflict,
                row,
            )

    @staticmethod
    async def _count(tx: Transaction, state: str, delta: int) -> None:
        await tx.execute(
            "INSERT INTO run_state_counts (state, count) VALUES (:state, :delta)"
            " ON CONFLICT (state) DO UPDATE SET count = run_state_counts.count + excluded.count",
            {"state": str(state), "delta": delta},
        )

    # -- queries -----------------------------------------------------------------------

    async def get(self, run_id: str) -> Run | None:
        row = await self._db.fetch_one("SELECT snapshot FROM run_view WHERE run_id = :run_id", {"run_id": run_id})
        return Run.from_dict(json.loads(row[0])) if row else None

    async def page(
        self, *, state: RunState | None = None, page_size: int = 50, page_token: str = ""
    ) -> tuple[list[Run], str]:
        """One page of runs, newest first, and the token of the next page ("" on the last)."""
        state_key = str(state) if state else ""
        where: list[str] = []
        params: dict[str, object] = {"limit": page_size + 1}
        if state is not None:
            where.append("state = :state")
            params["state"] = str(state)
        if page_token:
            after = PageToken.decode(page_token, state=state_key)
            where.append("(create_time, run_id) < (:after_time, :after_id)")
            params.update(after_time=after.create_time, after_id=after.run_id)
        sql = "SELECT snapshot FROM run_view"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY create_time DESC, run_id DESC LIMIT :limit"
        rows = await self._db.fetch_all(sql, params)
        runs = [Run.from_dict(json.loads(row[0])) for row in rows[:page_size]]
        has_more = len(rows) > page_size
        next_token = PageToken(runs[-1].create_time, runs[-1].run_id, state_key).encode() if has_more else ""
        return runs, next_token

    async def counts(self) -> dict[RunState, int]:
        rows = await self._db.fetch_all("SELECT state, count FROM run_state_counts WHERE count > 0")
        return {RunState(row[0]): int(row[1]) for row in rows}

    async def snapshot(self) -> tuple[list[Run], dict[RunState, int]]:
        """The whole view, for comparing a rebuilt projection with a live one."""
        rows = await self._db.fetch_all("SELECT snapshot FROM run_view ORDER BY run_id")
        return [Run.from_dict(json.loads(row[0])) for row in rows], await self.counts()
