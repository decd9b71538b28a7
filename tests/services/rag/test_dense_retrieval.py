"""Dense and hybrid retrieval with the real all-MiniLM-L6-v2 model (loaded once per session)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from runtime.embedding import MiniLmEmbedder
from services.rag.knowledge_base import DocumentInput, KnowledgeBase, Mode

pytestmark = pytest.mark.slow

CORPUS = [
    DocumentInput("pets/cats", "Cats are small domesticated carnivores that purr and hunt mice.", {"topic": "animals"}),
    DocumentInput(
        "pets/dogs", "Dogs are loyal companions bred for herding, guarding and hunting.", {"topic": "animals"}
    ),
    DocumentInput(
        "ops/deadlines",
        "Every RPC carries a deadline; a call that runs past it is cancelled.",
        {"topic": "ops"},
    ),
    DocumentInput("ops/backoff", "Retries wait longer after each failure, with random jitter.", {"topic": "ops"}),
]


def test_embeddings_are_unit_length_and_similar_texts_are_close(minilm: MiniLmEmbedder) -> None:
    vectors = minilm.embed(["a kitten", "a young cat", "tax returns"])
    assert vectors.shape == (3, minilm.dimensions) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


@pytest.fixture
async def kb(tmp_path: Path, minilm: MiniLmEmbedder) -> AsyncIterator[KnowledgeBase]:
    """A knowledge base with dense retrieval, holding ``CORPUS``."""
    kb = await KnowledgeBase.open(tmp_path, embedder=minilm, save_delay_s=60)
    try:
        await kb.ingest(CORPUS)
        yield kb
    finally:
        await kb.close()


async def test_dense_search_finds_paraphrases_that_share_no_words(kb: KnowledgeBase) -> None:
    assert await kb.search("feline pet", top_k=3, mode=Mode.BM25) == []
    [best, *_] = await kb.search("feline pet", top_k=3, mode=Mode.DENSE)
    assert best.chunk.document_id == "pets/cats"
    assert -1.0 <= best.score <= 1.0
    [best, *_] = await kb.search("timeout of a remote call", top_k=3, mode=Mode.DENSE)
    assert best.chunk.document_id == "ops/deadlines"


async def test_hybrid_is_the_default_and_fuses_both_rankings(kb: KnowledgeBase) -> None:
    hits = await kb.search("jitter between retries", top_k=4)
    assert hits[0].chunk.document_id == "ops/backoff"
    # Reciprocal-rank scores: at most 2 / (60 + 1) for an item first in both rankings.
    assert 0 < hits[0].score <= 2 / 61 + 1e-9


async def test_dense_search_applies_metadata_filters(kb: KnowledgeBase) -> None:
    hits = await kb.search("feline pet", top_k=4, mode=Mode.DENSE, metadata_filter={"topic": "ops"})
    assert {h.chunk.document_id for h in hits} == {"ops/deadlines", "ops/backoff"}


async def test_the_vector_index_survives_a_restart(tmp_path: Path, minilm: MiniLmEmbedder) -> None:
    kb = await KnowledgeBase.open(tmp_path, embedder=minilm, save_delay_s=60)
    await kb.ingest(CORPUS)
    await kb.delete("pets/dogs")
    before = [(h.chunk.key, round(h.score, 5)) for h in await kb.search("puppy", top_k=3, mode=Mode.DENSE)]
    assert "pets/dogs" not in {h.chunk.document_id for h in await kb.search("puppy", top_k=3, mode=Mode.DENSE)}
    await kb.close()
    reopened = await KnowledgeBase.open(tmp_path, embedder=minilm)
    try:
        assert reopened.snapshot.restored
        after = [(h.chunk.key, round(h.score, 5)) for h in await reopened.search("puppy", top_k=3, mode=Mode.DENSE)]
        assert after == before
    finally:
        await reopened.close()


async def test_enabling_dense_later_embeds_the_existing_chunks(tmp_path: Path, minilm: MiniLmEmbedder) -> None:
    lexical = await KnowledgeBase.open(tmp_path, save_delay_s=60)
    await lexical.ingest(CORPUS)
    await lexical.close()
    dense = await KnowledgeBase.open(tmp_path, embedder=minilm)
    try:
        assert not dense.snapshot.restored, "saved indexes without vectors are rebuilt"
        [best, *_] = await dense.search("feline pet", top_k=3, mode=Mode.DENSE)
        assert best.chunk.document_id == "pets/cats"
    finally:
        await dense.close()
