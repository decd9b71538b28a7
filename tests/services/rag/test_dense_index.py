from __future__ import annotations

import numpy as np

from services.rag.dense_index import DenseIndex


def test_selective_filters_are_scored_exactly_and_broad_ones_through_the_graph() -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(6000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = np.arange(1, 6001, dtype=np.uint64)
    index = DenseIndex.empty(16)
    index.apply(remove=np.empty(0, np.uint64), add_keys=keys, add_vectors=vectors)
    query = vectors[41]
    assert index.search(query, 1)[0][0] == 42
    few = np.array([5, 42, 900], dtype=np.uint64)
    assert index.search(query, 3, few)[0][0] == 42
    many = keys[keys % 2 == 0]
    hits = index.search(query, 5, many)
    assert len(hits) == 5 and all(key % 2 == 0 for key, _ in hits) and hits[0][0] == 42


def test_a_change_removes_and_adds_vectors_in_place() -> None:
    index = DenseIndex.empty(4)
    index.apply(
        remove=np.empty(0, np.uint64), add_keys=np.array([1, 2], np.uint64), add_vectors=np.eye(4, dtype=np.float32)[:2]
    )
    index.apply(
        remove=np.array([1], np.uint64), add_keys=np.array([3], np.uint64), add_vectors=np.eye(4, dtype=np.float32)[2:3]
    )
    assert len(index) == 2
    assert index.search(np.eye(4, dtype=np.float32)[0], 3)[0][0] != 1
