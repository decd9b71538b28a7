"""Idempotency keys in Redis: shared by every replica, expiry handled by Redis itself.

Each key is a hash (``fp``, ``owner``, ``record``) with a TTL. Claim, complete and
release are Lua scripts, so each is atomic on the server: of many concurrent claims
exactly one creates the hash, and only the claim's owner can complete or release it.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis

from interceptors.idempotency.store import Entry

_CLAIM = """
local found = redis.call('HMGET', KEYS[1], 'fp', 'record')
if found[1] then return found end
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'owner', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return nil
"""
_COMPLETE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'record', ARGV[2])
redis.call('HDEL', KEYS[1], 'owner')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    """A store in Redis; keys are namespaced by ``prefix``."""

    def __init__(self, *, client: redis.Redis, prefix: str = "agentmesh:idempotency:") -> None:
        self._client = client
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "agentmesh:idempotency:") -> RedisStore:
        return cls(client=redis.Redis.from_url(url), prefix=prefix)

    async def claim(self, key: str, fingerprint: str, owner: str, *, lease: float) -> Entry | None:
        found: Any = await self._claim(keys=[self._prefix + key], args=[fingerprint, owner, _ms(lease)])
        if found is None:
            return None
        return Entry(found[0].decode(), found[1])

    async def complete(self, key: str, owner: str, record: bytes, *, ttl: float) -> None:
        await self._complete(keys=[self._prefix + key], args=[owner, record, _ms(ttl)])

    async def release(self, key: str, owner: str) -> None:
        await self._release(keys=[self._prefix + key], args=[owner])

    async def close(self) -> None:
        await self._client.aclose()
