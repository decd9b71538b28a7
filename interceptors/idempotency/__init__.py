"""Idempotency keys: the interceptor and the stores it can keep keys in."""

from interceptors.idempotency.interceptor import HEADER, IdempotencyInterceptor, IdempotentMethod
from interceptors.idempotency.memory_store import MemoryStore
from interceptors.idempotency.postgres_store import PostgresStore
from interceptors.idempotency.redis_store import RedisStore
from interceptors.idempotency.sqlite_store import SQLiteStore
from interceptors.idempotency.store import Entry, IdempotencyStore

__all__ = [
    "HEADER",
    "Entry",
    "IdempotencyInterceptor",
    "IdempotencyStore",
    "IdempotentMethod",
    "MemoryStore",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
]
