"""Idempotency keys: the interceptor, the store interface it keeps keys behind, and an in-memory store.

Stores on a real backend (SQLite, PostgreSQL, Redis) are the runtime's (``runtime.idempotency``),
as go-grpc-middleware leaves storage to the caller.
"""

from interceptors.idempotency.interceptor import HEADER, IdempotencyInterceptor, IdempotentMethod
from interceptors.idempotency.memory_store import MemoryStore
from interceptors.idempotency.store import Entry, IdempotencyStore

__all__ = [
    "HEADER",
    "Entry",
    "IdempotencyInterceptor",
    "IdempotencyStore",
    "IdempotentMethod",
    "MemoryStore",
]
