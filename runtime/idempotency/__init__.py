"""Where idempotency keys are kept: the stores behind ``interceptors.idempotency.IdempotencyStore``.

The interceptor owns the protocol and an in-memory store; the stores that need a backend live
here, on the runtime's: ``DatabaseStore`` on ``runtime.database`` (the service's SQLite file by
default, or PostgreSQL, with versioned migrations) and ``RedisStore``.
"""

from runtime.idempotency.database_store import DatabaseStore
from runtime.idempotency.redis_store import RedisStore

__all__ = ["DatabaseStore", "RedisStore"]
