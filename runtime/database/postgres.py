"""PostgreSQL backend: asyncpg statements over SQLAlchemy 2's connection pool, for replicas sharing one database.

SQLAlchemy brings the pool a hand-written layer would get wrong: connections a restarted server
dropped are replaced (one that sat idle is pinged before it is handed out), checkout waits are
bounded. The pool holds at most ``pool_size`` connections and keeps them open (no overflow): a
replica's share of the server's ``max_connections`` is one stated number, and a steady load does
not open and close connections through the network hop (SQLAlchemy closes an overflow connection
at check-in). Statements go to asyncpg directly: ``:name`` parameters are
rewritten to ``$n`` once per statement text (the rule SQLAlchemy's ``text()`` applies), and each
pooled connection keeps its prepared statements (an LRU, as SQLAlchemy's asyncpg dialect does),
so a statement costs one round trip and little Python: under load Core's per-statement
compilation and result handling were about a fifth of an agent's CPU. Transactions run at READ
COMMITTED; a store that must serialize with other replicas (a check-then-write) takes a
transaction advisory lock (``Transaction.lock``), released by COMMIT or ROLLBACK; one statement
alone (``execute``) runs in autocommit, with no BEGIN or COMMIT round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import structlog
from asyncpg.prepared_stmt import PreparedStatement
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import await_only, greenlet_spawn
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty

from bounded.lru import LRUCache
from runtime.backoff import Backoff
from runtime.database.errors import DatabaseUnavailable
from runtime.database.interface import Dialect, Params, Result
from runtime.database.migrations import MIGRATIONS_TABLE, Schema, record_version, recorded_version
from runtime.database.urls import POSTGRES_DRIVERS
from runtime.supervisor import Outage, SupervisedLoop

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

# asyncpg errors meaning "the server is not there (now)", not "your statement is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    PoolTimeout,
    DisconnectionError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,  # "connection is closed"
    asyncpg.InvalidCatalogNameError,  # the database is not created yet (provisioned beside the service)
)


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) says the database could not be reached."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (InterfaceError, *_UNAVAILABLE)):
            return True
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else (current.__cause__ or current.__context__)
    return False


# A ``:name`` parameter, as SQLAlchemy's ``text()`` finds them: not a ``::`` cast, not inside a word.
_PARAMETER = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")
# Prepared statements kept per connection (SQLAlchemy's asyncpg dialect keeps 100 as well).
_PREPARED_PER_CONNECTION = 100
_STATUS_COUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|MERGE|INSERT \d+) (\d+)")


@functools.lru_cache(maxsize=1024)
def positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` with its ``:name`` parameters numbered ``$1, $2, …`` (a name used twice keeps its
    number), and the names in that order."""
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${names.setdefault(match.group(1), len(names) + 1)}"

    return _PARAMETER.sub(number, sql), tuple(names)


class _Statements:
    """One connection's prepared statements, by text, the least recently used dropped first."""

    def __init__(self) -> None:
        self._prepared: LRUCache[str, PreparedStatement] = LRUCache(_PREPARED_PER_CONNECTION)

    async def run(self, driver: asyncpg.Connection, sql: str, params: Params | None) -> Result:
        query, names = positional(sql)
        values = _values(names, params or {})
        statement = self._prepared.get(query)
        if statement is None:
            statement = await driver.prepare(query)
            self._prepared[query] = statement
        try:
            rows = await statement.fetch(*values)
        except asyncpg.InvalidCachedStatementError:
            # The schema changed under the plan (a migration by another replica): prepare again.
            self._prepared.pop(query)
            raise
        count = _STATUS_COUNT.match(statement.get_statusmsg() or "")
        return Result(rows, int(count.group(1)) if count else -1)


def _values(names: tuple[str, ...], params: Mapping[str, Any]) -> list[Any]:
    try:
        return [params[name] for name in names]
    except KeyError as missing:
        raise ValueError(f"no value for the parameter :{missing.args[0]}") from None


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name`` (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class PostgresTransaction:
    dialect: Dialect = "postgresql"

    def __init__(self, db: PostgresDatabase, driver: asyncpg.Connection, statements: _Statements) -> None:
        self._db = db
        self._driver = driver
        self._statements = statements
        self._after_commit: list[Callable[[], None]] = []
        self._notified: set[str] = set()

    async def execute(self, sql: str, params: Params | None = None) -> Result:
        with self._db.unavailable_as_typed():
            return await self._statements.run(self._driver, sql, params)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    async def lock(self, name: str) -> None:
        await self.execute("SELECT pg_advisory_xact_lock(:key)", {"key": lock_key(name)})

    async def lock_all(self, names: Sequence[str]) -> None:
        # unnest yields the keys in order, and each row's lock is taken as the row is produced.
        if names:
            await self.execute(
                "SELECT pg_advisory_xact_lock(key) FROM unnest(CAST(:keys AS BIGINT[])) AS key",
                {"keys": [lock_key(name) for name in names]},
            )

    async def notify(self, channel: str) -> None:
        # Delivered by PostgreSQL at COMMIT to every listening connection (other replicas);
        # this process is woken directly, without the round trip. Once per transaction is
        # enough (PostgreSQL folds repeats anyway).
        if channel in self._notified:
            return
        self._notified.add(channel)
        await self.execute("SELECT pg_notify(:channel, '')", {"channel": channel})
        self.on_commit(lambda: self._db.wake(channel))

    async def execute_script(self, script: str) -> None:
        """Several statements (DDL), in this transaction, through asyncpg's simple query protocol."""
        with self._db.unavailable_as_typed():
            await self._driver.execute(script)

    def run_commit_callbacks(self) -> None:
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()


class PostgresDatabase:
    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, setting: str = "", pool_size: int = 10, connect_timeout_s: float = 5.0) -> None:
        parsed = make_url(url)
        if parsed.drivername not in POSTGRES_DRIVERS:
            raise ValueError(f"not a PostgreSQL URL: {parsed.drivername}://…")
        self.setting = setting
        self.description = parsed.render_as_string(hide_password=True)
        self._dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._connect_timeout_s = connect_timeout_s
        self.engine: AsyncEngine = create_async_engine(
            parsed.set(drivername="postgresql+asyncpg"),
            poolclass=_Pool,
            pool_size=pool_size,
            # Callers past ``pool_size`` wait for a connection (up to ``pool_timeout``) instead of
            # opening one more through the hop, preparing its statements afresh and closing it at
            # check-in: measured, waiting costs less (docs/benchmarks.md, "Workers and the pool").
            max_overflow=0,
            # The connection returned last is handed out first: the few a steady load needs stay
            # hot (their statements prepared) and the rest sit idle, rather than every call
            # rotating through all of them.
            pool_use_lifo=True,
            # Pinged at checkout only after sitting idle (_ping_if_idle): SQLAlchemy's pre-ping costs
            # three round trips (BEGIN, ping, ROLLBACK) on every checkout, more than most statements.
            pool_pre_ping=False,
            pool_timeout=connect_timeout_s,
            # No ROLLBACK at check-in: statements never go through SQLAlchemy's transaction API,
            # and a connection whose transaction was not ended by COMMIT or ROLLBACK (or whose
            # statement was interrupted) is discarded, never returned (``_connection``). Check-in
            # is then bookkeeping only, done in place (no greenlet, no task).
            pool_reset_on_return=None,
            async_creator=self._connect,
        )
        pool = self.engine.sync_engine.pool
        for pool_event in ("connect", "checkin"):
            event.listen(pool, pool_event, _note_use)
        event.listen(pool, "checkout", _ping_if_idle)
        self._statements: weakref.WeakKeyDictionary[asyncpg.Connection, _Statements] = weakref.WeakKeyDictionary()
        self._listeners: defaultdict[str, list[Callable[[], None]]] = defaultdict(list)
        self._listener: SupervisedLoop | None = None
        self._listener_wakeup = asyncio.Event()

    async def _connect(self) -> asyncpg.Connection:
        """A new connection for the pool, made to its end even if the checkout that asked is cancelled.

        The pool frees the connection's place as soon as making it fails. Abandoned half-made (its
        socket closed, the server not waited for), the server would hold its session a while
        longer, and the next caller would open one more: the replica above its stated share of
        ``max_connections``. So a cancelled checkout's connection is finished, then closed, and the
        cancellation goes on once the server has let it go.
        """
        return await _made_else_closed(
            asyncpg.connect(self._dsn, timeout=self._connect_timeout_s),
            lambda conn: conn.close(timeout=self._connect_timeout_s),
        )

    @contextlib.contextmanager
    def unavailable_as_typed(self) -> Any:
        try:
            yield
        except DatabaseUnavailable:
            raise
        except Exception as error:
            if is_unavailable(error):
                raise DatabaseUnavailable(
                    f"database {self.description} unavailable: {type(error).__name__}: {error}".strip(),
                    setting=self.setting,
                ) from error
            raise

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[tuple[asyncpg.Connection, _Statements]]:
        """A pooled connection (outside any transaction: a statement on it commits on its own).

        One interrupted mid-statement (cancelled, or the server gone) is in a state nobody knows,
        and one still inside a transaction would hand it on: both are discarded rather than
        handed to the next caller.
        """
        with self.unavailable_as_typed():
            pooled = await self.engine.raw_connection()
        driver = pooled.driver_connection
        assert isinstance(driver, asyncpg.Connection)
        statements = self._statements.get(driver)
        if statements is None:
            statements = self._statements[driver] = _Statements()
        discard = False
        try:
            yield driver, statements
        except BaseException as error:
            discard = isinstance(error, asyncio.CancelledError) or is_unavailable(error)
            raise
        finally:
            if discard or driver.is_in_transaction():
                # Closing the connection is I/O: in SQLAlchemy's greenlet, to its end.
                await _complete(greenlet_spawn(pooled.invalidate))
            else:
                pooled.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        """A write transaction; BEGIN, COMMIT and ROLLBACK finish before a CancelledError goes through."""
        async with self._connection() as (driver, statements):
            with self.unavailable_as_typed():
                await _complete(driver.execute("BEGIN"))
            tx = PostgresTransaction(self, driver, statements)
            try:
                yield tx
            except BaseException:
                await self._rollback(driver)
                raise
            with self.unavailable_as_typed():
                await _complete(driver.execute("COMMIT"))
        tx.run_commit_callbacks()

    @staticmethod
    async def _rollback(driver: asyncpg.Connection) -> None:
        # A connection interrupted mid-statement may not roll back cleanly: left in its
        # transaction, it is discarded when it goes back (``_connection``).
        with contextlib.suppress(Exception):
            await _complete(driver.execute("ROLLBACK"))

    async def execute(self, sql: str, params: Params | None = None) -> Result:
        """One statement on its own (autocommit).

        A caller cancelled while its statement runs lets the statement end, for up to
        ``_END_AFTER_CANCEL_S``, before its cancellation goes on. Interrupting it would cost the
        server a connection of its own (the cancel request) and the pool a new connection (an
        interrupted one is discarded, ``_connection``): many times what a statement of a few
        milliseconds costs, and a watch whose client hangs up mid-read does it all the time. One
        still running then is interrupted, as before, so a statement stuck behind a lock cannot
        hold a cancelled caller (a replica being stopped) for long.
        """
        async with self._connection() as (driver, statements):
            statement = asyncio.ensure_future(statements.run(driver, sql, params))
            try:
                with self.unavailable_as_typed():
                    return await asyncio.shield(statement)
            except asyncio.CancelledError:
                if not await _ended_with_a_result(statement, within_s=_END_AFTER_CANCEL_S):
                    raise  # interrupted, or failed: the connection is discarded
        # It ended: its connection went back to the pool, and the caller's cancellation goes on.
        raise asyncio.CancelledError

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Any]:
        return list((await self.execute(sql, params)).rows)

    async def fetch_one(self, sql: str, params: Params | None = None) -> Any:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def ping(self) -> None:
        await self.fetch_all("SELECT 1")

    async def migrate(self, schema: Schema) -> int:
        async with self.transaction() as tx:
            # Replicas starting together queue here; the first migrates, the others find it done.
            await tx.lock(MIGRATIONS_TABLE)
            current = await recorded_version(tx, schema.component, real_type="DOUBLE PRECISION") or 0
            schema.check(current, where=f"the database {self.description}")
            for migration in schema.pending(current):
                await tx.execute_script(migration.postgresql)
            if current != schema.latest:
                await record_version(tx, schema)
                log.info("database migrated", component=schema.component, version=schema.latest, since=current)
            return schema.latest

    # -- LISTEN/NOTIFY ----------------------------------------------------------------------

    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        known = channel in self._listeners
        self._listeners[channel].append(callback)
        if self._listener is None:
            self._listener = SupervisedLoop(
                "postgres listener",
                self._listen_on_one_connection,
                backoff=Backoff(initial=0.2, maximum=5.0),
                outage=Outage(
                    (Exception,), "database listener lost; reconnecting", lambda _error: {"database": self.description}
                ),
            ).start()
        elif known:
            # The channel is listened to already (or will be on the next connect): only the
            # new callback needs its "now listening" call.
            callback()
        else:
            self._listener_wakeup.set()  # subscribe the new channel

    def wake(self, channel: str) -> None:
        for callback in self._listeners.get(channel, ()):
            callback()

    async def _listen_on_one_connection(self) -> None:
        """One connection LISTENing on every channel until it drops (then the supervisor reconnects).

        Each callback is called once when its channel starts being listened to, on this
        connection or after a reconnect: notifications sent while nobody listened are lost, so
        listeners re-read what they follow. A channel added later is subscribed at once.
        """
        assert self._listener is not None
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s)
            # A dropped connection and a new channel both wake the loop below.
            conn.add_termination_listener(functools.partial(_set_event, self._listener_wakeup))
            subscribed: set[str] = set()
            self._listener.mark_healthy()
            while not conn.is_closed():
                self._listener_wakeup.clear()
                for channel in [c for c in self._listeners if c not in subscribed]:
                    await conn.add_listener(channel, self._on_notification)
                    subscribed.add(channel)
                    self.wake(channel)
                try:
                    async with asyncio.timeout(10.0):
                        await self._listener_wakeup.wait()
                except TimeoutError:
                    # The keep-alive query notices a silently dead connection.
                    await conn.execute("SELECT 1")
            raise ConnectionError("listening connection closed")
        finally:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2.0))

    def _on_notification(self, _conn: object, _pid: int, channel: str, _payload: object) -> None:
        self.wake(channel)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
        await self.engine.dispose()


def _set_event(wakeup: asyncio.Event, _conn: object) -> None:
    wakeup.set()


class _Queue(AsyncAdaptedQueue[ConnectionPoolEntry]):
    """The pool's idle connections, taken without SQLAlchemy's ``asyncio.wait_for``.

    A connection that is there is taken at once: the blocking get (every checkout once the pool
    is full) would cost a task and a timer even when nothing has to wait. And a caller that does
    wait does so under ``asyncio.timeout``: Python 3.11's ``wait_for`` returns the connection
    instead of raising when the caller is cancelled just as one comes free, so the cancellation
    is lost, and a background loop being stopped went on forever (a service's shutdown hung).
    """

    def get(self, block: bool = True, timeout: float | None = None) -> ConnectionPoolEntry:
        if not block or not self.empty():
            return self.get_nowait()
        try:
            return self.await_(self._wait_for_one(within_s=timeout))
        except TimeoutError as error:
            raise Empty() from error

    async def _wait_for_one(self, *, within_s: float | None) -> ConnectionPoolEntry:
        async with asyncio.timeout(within_s):
            return await self._queue.get()


class _Pool(AsyncAdaptedQueuePool):
    """SQLAlchemy's pool, with ``_Queue``, and with a new connection made in a task of its own.

    A new connection is made in the greenlet of the caller checking out, and set up there
    (SQLAlchemy's ``connect`` event: on a pool's first connection, the dialect's initialize reads
    the server's version, schema and isolation level, a round trip each). If that caller is
    cancelled during the set-up, SQLAlchemy drops the half-made entry without closing its
    connection, and frees its place in the pool: the server keeps the session until the garbage
    collector closes it, while the next caller opens another. Made apart, the connection is
    finished, then closed, and only then does the caller's cancellation go on. (A connection
    re-made in an entry already in the pool is closed by SQLAlchemy when its set-up fails;
    ``PostgresDatabase._connect`` sees the connecting itself to its end in both cases.)
    """

    _queue_class = _Queue

    def _create_connection(self) -> ConnectionPoolEntry:
        made = _made_else_closed(greenlet_spawn(super()._create_connection), lambda entry: greenlet_spawn(entry.close))
        return await_only(made)


async def _made_else_closed(making: Awaitable[_T], close: Callable[[_T], Coroutine[Any, Any, object]]) -> _T:
    """``making`` awaited to its end even if the caller is cancelled meanwhile; then what it made
    is closed (also to its end) before the cancellation goes on."""
    made = asyncio.ensure_future(making)
    try:
        return await _complete(made)
    except asyncio.CancelledError:
        if not made.cancelled() and made.exception() is None:
            with contextlib.suppress(Exception):
                await _complete(close(made.result()))
        raise


# How long a statement whose caller was cancelled may go on to end by itself (``PostgresDatabase.execute``).
_END_AFTER_CANCEL_S = 1.0


async def _ended_with_a_result(statement: asyncio.Future[Any], *, within_s: float) -> bool:
    """Whether ``statement`` ends with a result within ``within_s``; if it has not ended by then
    (or the caller is cancelled again meanwhile), it is cancelled and awaited."""
    try:
        await asyncio.wait({statement}, timeout=within_s)
    finally:
        if not statement.done():
            statement.cancel()
            await asyncio.wait({statement})
    return not statement.cancelled() and statement.exception() is None


# A connection used this recently is taken to be alive; one idle longer may have been dropped by a
# server restart or failover, so it is pinged before use (and replaced if that fails).
_IDLE_BEFORE_PING_S = 5.0


def _note_use(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["last_used"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection) -> None:
    if time.monotonic() - record.info.get("last_used", 0.0) < _IDLE_BEFORE_PING_S:
        return
    try:
        dbapi_connection.ping()
    except Exception as error:
        # The pool discards this connection and checks out (or opens) another.
        raise DisconnectionError(f"idle connection dropped: {error}") from error


async def _complete(awaitable: Awaitable[_T]) -> _T:
    """Await ``awaitable`` to its end even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()
        raise
