"""Every store keeps the same contract: one atomic claim, owner-only completion and release, expiry."""

from __future__ import annotations

import asyncio

from interceptors.idempotency import Entry, IdempotencyStore, MemoryStore


async def test_the_first_claim_wins_and_later_ones_see_the_running_call(store: IdempotencyStore) -> None:
    assert await store.claim("k", "fp1", "owner-a", lease=60) is None
    assert await store.claim("k", "fp2", "owner-b", lease=60) == Entry("fp1", None)


async def test_of_fifty_concurrent_claims_exactly_one_wins(store: IdempotencyStore) -> None:
    results = await asyncio.gather(*(store.claim("k", "fp", f"owner-{n}", lease=60) for n in range(50)))
    assert sum(result is None for result in results) == 1


async def test_a_completed_key_returns_its_record(store: IdempotencyStore) -> None:
    await store.claim("k", "fp", "owner-a", lease=60)
    await store.complete("k", "owner-a", b"outcome", ttl=60)
    assert await store.claim("k", "fp", "owner-b", lease=60) == Entry("fp", b"outcome")


async def test_only_the_owner_completes_or_releases(store: IdempotencyStore) -> None:
    await store.claim("k", "fp", "owner-a", lease=60)
    await store.complete("k", "intruder", b"forged", ttl=60)
    await store.release("k", "intruder")
    assert await store.claim("k", "fp", "owner-b", lease=60) == Entry("fp", None)


async def test_a_released_key_can_be_claimed_again(store: IdempotencyStore) -> None:
    await store.claim("k", "fp", "owner-a", lease=60)
    await store.release("k", "owner-a")
    assert await store.claim("k", "fp", "owner-b", lease=60) is None


async def test_a_lapsed_lease_frees_the_key_and_the_old_owner_cannot_complete(
    store: IdempotencyStore,
) -> None:
    await store.claim("k", "fp", "owner-a", lease=0.05)
    await asyncio.sleep(0.15)
    assert await store.claim("k", "fp", "owner-b", lease=60) is None
    await store.complete("k", "owner-a", b"late", ttl=60)
    assert await store.claim("k", "fp", "owner-c", lease=60) == Entry("fp", None)


async def test_completed_keys_expire_after_their_ttl(store: IdempotencyStore) -> None:
    await store.claim("k", "fp", "owner-a", lease=60)
    await store.complete("k", "owner-a", b"outcome", ttl=0.05)
    await asyncio.sleep(0.15)
    assert await store.claim("k", "fp", "owner-b", lease=60) is None


async def test_the_memory_store_drops_the_oldest_claim_past_its_bound_even_if_read_since() -> None:
    store = MemoryStore(max_entries=2)
    await store.claim("a", "fp", "owner", lease=60)
    await store.claim("b", "fp", "owner", lease=60)
    assert await store.claim("a", "fp", "retry", lease=60) == Entry("fp", None)  # a read: "a" stays oldest
    await store.claim("c", "fp", "owner", lease=60)

    assert await store.claim("a", "fp", "later", lease=60) is None  # dropped, so claimable again
    assert await store.claim("c", "fp", "retry", lease=60) == Entry("fp", None)
