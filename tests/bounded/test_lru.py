"""The one bounded LRU map every in-process cache uses: what it keeps, what it drops, and when."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bounded.lru import LRUCache


def test_past_its_capacity_it_drops_the_least_recently_used() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache["a"] = 1
    cache["b"] = 2
    assert cache.get("a") == 1  # "a" is now more recent than "b"
    cache["c"] = 3
    assert "b" not in cache
    assert (cache.get("a"), cache.get("c"), len(cache)) == (1, 3, 2)


def test_assigning_an_existing_key_replaces_it_and_makes_it_the_most_recent() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache["a"] = 1
    cache["b"] = 2
    cache["a"] = 10
    cache["c"] = 3
    assert "b" not in cache
    assert cache.get("a") == 10


def test_peek_and_in_read_without_using_the_entry() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache["a"] = 1
    cache["b"] = 2
    assert cache.peek("a") == 1
    assert "a" in cache
    cache["c"] = 3
    assert "a" not in cache  # still the oldest: peeking did not keep it
    assert cache.peek("a") is None


def test_values_come_in_order_of_use_and_reading_them_uses_none() -> None:
    cache: LRUCache[str, int] = LRUCache(3)
    cache["a"], cache["b"], cache["c"] = 1, 2, 3
    cache.get("a")
    assert list(cache.values()) == [2, 3, 1]
    assert list(cache.values(newest_first=True)) == [1, 3, 2]
    cache["d"] = 4  # "b" is still the least recently used
    assert list(cache.values()) == [3, 1, 4]


def test_a_stored_none_is_still_used_by_get() -> None:
    cache: LRUCache[str, None] = LRUCache(2)
    cache["a"] = None
    cache["b"] = None
    cache.get("a")
    cache["c"] = None
    assert "a" in cache
    assert "b" not in cache


def test_pop_and_clear_remove_entries() -> None:
    cache: LRUCache[str, int] = LRUCache(3)
    cache["a"] = 1
    cache["b"] = 2
    assert cache.pop("a") == 1
    assert cache.pop("a") is None  # gone already: not an error
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
    assert cache.get("b") is None


def test_a_capacity_of_zero_holds_nothing() -> None:
    cache: LRUCache[str, int] = LRUCache(0)
    cache["a"] = 1
    assert len(cache) == 0


@pytest.mark.parametrize("capacity", [-1, 1.5, True, "10"])
def test_a_capacity_that_is_not_a_whole_number_of_entries_is_refused(capacity: object) -> None:
    with pytest.raises(ValueError, match="0 or more"):
        LRUCache(capacity)  # type: ignore[arg-type]


_steps = st.lists(
    st.tuples(st.sampled_from(["set", "get", "peek", "pop"]), st.integers(0, 3), st.integers(0, 9)), max_size=40
)


@settings(max_examples=300)
@given(capacity=st.integers(0, 3), steps=_steps)
def test_it_behaves_as_a_list_of_keys_in_order_of_use(capacity: int, steps: list[tuple[str, int, int]]) -> None:
    """Against the plainest model: the keys, least recently used first, trimmed from the front."""
    cache: LRUCache[int, int] = LRUCache(capacity)
    order: list[int] = []
    values: dict[int, int] = {}

    def use(key: int) -> None:
        if key in order:
            order.remove(key)
            order.append(key)

    for action, key, value in steps:
        if action == "set":
            cache[key] = value
            if key in order:
                use(key)
            else:
                order.append(key)
            values[key] = value
            while len(order) > capacity:
                del values[order.pop(0)]
        elif action == "get":
            assert cache.get(key) == values.get(key)
            use(key)
        elif action == "peek":
            assert cache.peek(key) == values.get(key)
        else:
            assert cache.pop(key) == values.pop(key, None)
            if key in order:
                order.remove(key)
        assert len(cache) == len(order)
        assert all(key in cache for key in order)
    # The order itself, as evictions show it: new keys push the old ones out, least recently used first.
    for filled in range(1, capacity + 1):
        cache[-filled] = 0
        kept = order[len(order) - min(len(order), capacity - filled) :]
        assert [key for key in order if key in cache] == kept
