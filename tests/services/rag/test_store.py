from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from services.rag.store import DocumentWrite, NewChunk, Store


def write(document_id: str, text: str, *, model_vector: bool = True) -> DocumentWrite:
    digest = hashlib.sha256(text.encode()).hexdigest()
    chunk = NewChunk(ordinal=0, start=0, end=len(text), heading="", content_hash=digest, tokens=tuple(text.split()))
    vectors = {digest: np.ones(4, dtype=np.float32)} if model_vector else {}
    return DocumentWrite(document_id, "text/plain", {}, text, digest, [chunk], vectors)


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        (n,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(n)


async def test_identical_text_is_stored_once_and_kept_while_any_document_uses_it(tmp_path: Path) -> None:
    path = tmp_path / "rag.sqlite3"
    store = await Store.open(path, model="m")
    try:
        await store.apply([write("a", "same text"), write("b", "same text")], update_time=1.0)
        assert (count(path, "contents"), count(path, "embeddings"), count(path, "chunks")) == (1, 1, 2)
        await store.apply([], deletes=["a"], update_time=2.0)
        assert (count(path, "contents"), count(path, "embeddings")) == (1, 1)
        await store.apply([], deletes=["b"], update_time=3.0)
        assert (count(path, "contents"), count(path, "embeddings"), count(path, "chunks")) == (0, 0, 0)
    finally:
        await store.close()


async def test_replacing_a_document_drops_its_old_text_and_embeddings(tmp_path: Path) -> None:
    path = tmp_path / "rag.sqlite3"
    store = await Store.open(path, model="m")
    try:
        await store.apply([write("a", "old text")], update_time=1.0)
        generation, keys = await store.apply([write("a", "new text")], update_time=2.0)
        assert generation == 2
        assert (count(path, "contents"), count(path, "embeddings"), count(path, "chunks")) == (1, 1, 1)
        loaded_generation, documents, chunks = await store.load_all()
        assert loaded_generation == 2
        assert [d.content_hash for d in documents] == [hashlib.sha256(b"new text").hexdigest()]
        assert [(c.key, c.text) for c in chunks] == [(keys["a"][0], "new text")]
        assert chunks[0].vector is not None
    finally:
        await store.close()


async def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "rag.sqlite3"
    store = await Store.open(path, model=None)
    try:
        await store.apply([write("a", "kept")], update_time=1.0)
        # Metadata that cannot be serialised fails the second write, after the first one ran.
        broken = dataclasses.replace(write("b", "never stored"), metadata={"k": object()})  # type: ignore[dict-item]
        with pytest.raises(TypeError):
            await store.apply([write("c", "also not stored"), broken], update_time=2.0)
        generation, documents, _ = await store.load_all()
        assert generation == 1
        assert [d.document_id for d in documents] == ["a"]
    finally:
        await store.close()
