"""A2A push notifications: configs in the shared database, deliveries through an outbox of their own.

    run event ──(transactional outbox → bus, group agent.a2a.push)──► enqueue: one delivery row per
    (update, config), idempotent ──► deliver: claim due rows, POST, mark delivered or back off

- At least once: a row stays until a 2xx; a replica that dies after POSTing leaves its claim to
  expire (``claim_lease_s``) and another replica sends it again. Receivers deduplicate on the
  ``X-A2A-Notification-Id`` header (the row's key), as on a bus.
- In order per destination: a task's updates reach a config's URL in log order; one being retried
  holds back the ones after it.
- One delivery per event across replicas: rows are keyed (update id, config id), so a redelivered
  bus event enqueues nothing new; a row is claimed by one replica at a time (``FOR UPDATE SKIP
  LOCKED`` on PostgreSQL, the single writer on SQLite).
- Bounded: after ``max_attempts`` failures, or a URL the policy now refuses, a row is abandoned
  (kept, with its last error, for inspection), never retried forever.
- Read only where they may exist: the run row counts its configs (changed here, under the row's
  lock) and each run event carries the count its write saw (``run_store``: why that loses no push).
  The consumer reads a task's configs only for an event that does not say 0.
- Sent as the A2A spec and a2a-sdk's sender do: the StreamResponse as JSON, the config's token in
  ``X-A2A-Notification-Token`` and its authentication as ``Authorization: <scheme> <credentials>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass

import aiohttp
import structlog
from a2a.types import a2a_pb2
from google.protobuf import json_format

from runtime.backoff import Backoff
from runtime.database import Database, Migration, Schema, Transaction
from runtime.events.bus import Event
from services.agent.a2a_push_policy import PushSettings, PushUrlRefused, check_push_url
from services.agent.a2a_tasks import stream_events
from services.agent.run_store import run_event_from_event

log = structlog.get_logger(__name__)

_V1 = """
CREATE TABLE IF NOT EXISTS a2a_push_configs (
    task_id     TEXT NOT NULL,
    config_id   TEXT NOT NULL,
    creator     TEXT NOT NULL,
    config      TEXT NOT NULL,
    create_time {real} NOT NULL,
    PRIMARY KEY (task_id, config_id)
);
CREATE TABLE IF NOT EXISTS a2a_push_deliveries (
    delivery_id     TEXT PRIMARY KEY,
    task_id         TEXT NOT NULL,
    config_id       TEXT NOT NULL,
    sequence        BIGINT NOT NULL,
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {real} NOT NULL,
    claimed_until   {real},
    delivered_at    {real},
    abandoned_at    {real},
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS a2a_push_due ON a2a_push_deliveries (next_attempt_at, sequence)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;
CREATE INDEX IF NOT EXISTS a2a_push_queue ON a2a_push_deliveries (task_id, config_id, sequence, delivery_id)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;
"""
SCHEMA = Schema(
    "agent.a2a_push",
    (Migration(1, sqlite=_V1.format(real="REAL"), postgresql=_V1.format(real="DOUBLE PRECISION")),),
)
PUSH_GROUP = "agent.a2a.push"
# Due, and first in its destination's queue: a receiver gets a task's updates in log order, so an
# update being retried holds back the ones after it (the answer arrives before COMPLETED).
_DUE = (
    "SELECT d.delivery_id, d.task_id, d.config_id, d.payload, d.attempts FROM a2a_push_deliveries d"
    " WHERE d.delivered_at IS NULL AND d.abandoned_at IS NULL AND d.next_attempt_at <= :now"
    " AND (d.claimed_until IS NULL OR d.claimed_until < :now)"
    " AND NOT EXISTS (SELECT 1 FROM a2a_push_deliveries e WHERE e.task_id = d.task_id"
    " AND e.config_id = d.config_id AND e.delivered_at IS NULL AND e.abandoned_at IS NULL"
    " AND (e.sequence < d.sequence OR (e.sequence = d.sequence AND e.delivery_id < d.delivery_id)))"
    " ORDER BY d.next_attempt_at, d.sequence LIMIT :limit"
)


class PushConfigNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class _Due:
    delivery_id: str
    task_id: str
    config_id: str
    payload: str
    attempts: int


class PushNotifications:
    def __init__(self, db: Database, settings: PushSettings) -> None:
        self._db = db
        self.settings = settings
        self._wakeup = asyncio.Event()
        self._backoff = Backoff(initial=settings.initial_backoff_s, maximum=settings.max_backoff_s)

    async def create_schema(self) -> None:
        await self._db.migrate(SCHEMA)

    # -- configs ----------------------------------------------------------------------------

    async def save(
        self, config: a2a_pb2.TaskPushNotificationConfig, *, creator: str
    ) -> a2a_pb2.TaskPushNotificationConfig:
        """Store (or replace, same id) a task's config after checking its URL; returns it with its id."""
        await check_push_url(config.url, self.settings)
        stored = a2a_pb2.TaskPushNotificationConfig()
        stored.CopyFrom(config)
        stored.tenant = ""
        stored.id = config.id or uuid.uuid4().hex
        params = {
            "task_id": stored.task_id,
            "config_id": stored.id,
            "creator": creator,
            "config": json_format.MessageToJson(stored),
            "now": time.time(),
        }
        async with self._db.transaction() as tx:
            await _lock_run(tx, stored.task_id)
            await tx.execute(
                "INSERT INTO a2a_push_configs (task_id, config_id, creator, config, create_time)"
                " VALUES (:task_id, :config_id, :creator, :config, :now)"
                " ON CONFLICT (task_id, config_id) DO UPDATE SET config = excluded.config, creator = excluded.creator",
                params,
            )
            await _recount(tx, stored.task_id)
        return stored

    async def get(self, task_id: str, config_id: str) -> a2a_pb2.TaskPushNotificationConfig:
        row = await self._db.fetch_one(
            "SELECT config FROM a2a_push_configs WHERE task_id = :task_id AND config_id = :config_id",
            {"task_id": task_id, "config_id": config_id},
        )
        if row is None:
            raise PushConfigNotFound(config_id)
        return json_format.Parse(row[0], a2a_pb2.TaskPushNotificationConfig())

    async def page(
        self, task_id: str, *, page_size: int, after: str = ""
    ) -> tuple[list[a2a_pb2.TaskPushNotificationConfig], str]:
        rows = await self._db.fetch_all(
            "SELECT config_id, config FROM a2a_push_configs WHERE task_id = :task_id AND config_id > :after"
            " ORDER BY config_id LIMIT :limit",
            {"task_id": task_id, "after": after, "limit": page_size + 1},
        )
        configs = [json_format.Parse(row[1], a2a_pb2.TaskPushNotificationConfig()) for row in rows[:page_size]]
        return configs, (rows[page_size - 1][0] if len(rows) > page_size else "")

    async def delete(self, task_id: str, config_id: str) -> None:
        async with self._db.transaction() as tx:
            await _lock_run(tx, task_id)
            await tx.execute(
                "DELETE FROM a2a_push_configs WHERE task_id = :task_id AND config_id = :config_id",
                {"task_id": task_id, "config_id": config_id},
            )
            await _recount(tx, task_id)

    # -- enqueue (a bus consumer) -----------------------------------------------------------

    async def enqueue(self, event: Event) -> None:
        """The deliveries one run event makes: one per (update it produces, config of its task)."""
        run_event = run_event_from_event(event)
        updates = list(stream_events(run_event))
        # 0: the task had no config when this event committed (-1 or absent: not known, so read).
        if not updates or event.data.get("push_configs", -1) == 0:
            return
        rows = await self._db.fetch_all(
            "SELECT config_id FROM a2a_push_configs WHERE task_id = :task_id", {"task_id": run_event.run_id}
        )
        if not rows:
            return
        now = time.time()
        async with self._db.transaction() as tx:
            for index, update in enumerate(updates):
                payload = json_format.MessageToJson(_stream_response(update), indent=None)
                for (config_id,) in rows:
                    await tx.execute(
                        "INSERT INTO a2a_push_deliveries"
                        " (delivery_id, task_id, config_id, sequence, payload, next_attempt_at)"
                        " VALUES (:delivery_id, :task_id, :config_id, :sequence, :payload, :now)"
                        " ON CONFLICT (delivery_id) DO NOTHING",
                        {
                            "delivery_id": f"{event.id}.{index}.{config_id}",
                            "task_id": run_event.run_id,
                            "config_id": config_id,
                            "sequence": run_event.sequence,
                            "payload": payload,
                            "now": now,
                        },
                    )
            tx.on_commit(self._wakeup.set)

    # -- deliver ----------------------------------------------------------------------------

    async def deliver(self, *, poll_interval_s: float = 1.0) -> None:
        """Send due deliveries forever (run supervised): woken by enqueues, polling for retries and other replicas."""
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self._wakeup.clear()
                while await self.deliver_once(session) > 0:
                    pass
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_interval_s):
                        await self._wakeup.wait()

    async def deliver_once(self, session: aiohttp.ClientSession, *, batch_size: int = 50) -> int:
        claimed = await self._claim(batch_size)
        await asyncio.gather(*(self._send(session, due) for due in claimed))
        return len(claimed)

    async def _claim(self, batch_size: int) -> list[_Due]:
        now = time.time()
        lock = " FOR UPDATE SKIP LOCKED" if self._db.dialect == "postgresql" else ""
        async with self._db.transaction() as tx:
            rows = (await tx.execute(_DUE + lock, {"now": now, "limit": batch_size})).rows
            for row in rows:
                await tx.execute(
                    "UPDATE a2a_push_deliveries SET claimed_until = :until WHERE delivery_id = :delivery_id",
                    {"until": now + self.settings.claim_lease_s, "delivery_id": row[0]},
                )
        return [_Due(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4])) for r in rows]

    async def _send(self, session: aiohttp.ClientSession, due: _Due) -> None:
        delivery_id, task_id, config_id, attempts = due.delivery_id, due.task_id, due.config_id, due.attempts
        try:
            config = await self.get(task_id, config_id)
        except PushConfigNotFound:
            await self._finish(delivery_id, abandoned="the push config was deleted")
            return
        try:
            await check_push_url(config.url, self.settings)
        except PushUrlRefused as refused:
            await self._finish(delivery_id, abandoned=f"{config.url}: {refused}")
            return
        headers = {"Content-Type": "application/json", "X-A2A-Notification-Id": delivery_id}
        if config.token:
            headers["X-A2A-Notification-Token"] = config.token
        if config.HasField("authentication") and config.authentication.scheme and config.authentication.credentials:
            headers["Authorization"] = f"{config.authentication.scheme} {config.authentication.credentials}"
        try:
            async with session.post(config.url, data=due.payload, headers=headers, allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    await self._finish(delivery_id)
                    return
                error = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        attempts += 1
        if attempts >= self.settings.max_attempts:
            log.warning("a2a push abandoned", task_id=task_id, config_id=config_id, attempts=attempts, error=error)
            await self._finish(delivery_id, abandoned=error, attempts=attempts)
            return
        delay = self._backoff.delay(attempts - 1)
        log.info("a2a push failed; retrying", task_id=task_id, config_id=config_id, retry_in_s=delay, error=error)
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE a2a_push_deliveries SET attempts = :attempts, next_attempt_at = :at, claimed_until = NULL,"
                " last_error = :error WHERE delivery_id = :delivery_id",
                {"attempts": attempts, "at": time.time() + delay, "error": error, "delivery_id": delivery_id},
            )

    async def _finish(self, delivery_id: str, *, abandoned: str = "", attempts: int | None = None) -> None:
        column = "abandoned_at" if abandoned else "delivered_at"
        async with self._db.transaction() as tx:
            await tx.execute(
                f"UPDATE a2a_push_deliveries SET {column} = :now, claimed_until = NULL, last_error = :error,"
                " attempts = coalesce(:attempts, attempts + 1) WHERE delivery_id = :delivery_id",
                {"now": time.time(), "error": abandoned or None, "attempts": attempts, "delivery_id": delivery_id},
            )

    async def pending(self) -> int:
        row = await self._db.fetch_one(
            "SELECT count(*) FROM a2a_push_deliveries WHERE delivered_at IS NULL AND abandoned_at IS NULL"
        )
        return int(row[0]) if row else 0


async def _lock_run(tx: Transaction, task_id: str) -> None:
    """Take the task's run row lock first: every change of its configs, and every event written for
    it, then waits for this transaction (``run_store``), so the count written next is exact."""
    await tx.execute("UPDATE runs SET push_configs = push_configs WHERE run_id = :task_id", {"task_id": task_id})


async def _recount(tx: Transaction, task_id: str) -> None:
    await tx.execute(
        "UPDATE runs SET push_configs = (SELECT count(*) FROM a2a_push_configs WHERE task_id = :task_id)"
        " WHERE run_id = :task_id",
        {"task_id": task_id},
    )


def _stream_response(
    update: a2a_pb2.TaskStatusUpdateEvent | a2a_pb2.TaskArtifactUpdateEvent,
) -> a2a_pb2.StreamResponse:
    if isinstance(update, a2a_pb2.TaskStatusUpdateEvent):
        return a2a_pb2.StreamResponse(status_update=update)
    return a2a_pb2.StreamResponse(artifact_update=update)
