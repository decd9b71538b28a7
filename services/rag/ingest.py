"""Turning ingest requests into store writes: chunked, tokenized and embedded off the event loop.

Re-ingesting what is already stored (a seed on every start, a retried batch, the same document
through another replica) costs a hash per document: only new or changed documents are chunked
and embedded, and embeddings already stored (by any replica) are reused.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from services.rag.chunking import ChunkingOptions, ContentType, chunk_document, index_text
from services.rag.lexical_index import tokenize
from services.rag.store import DocumentVersion, DocumentWrite, NewChunk, Store, Vector
from services.rag.validation import CONTENT_TYPES, DocumentInput, content_hash, document_version

Embed = Callable[[Sequence[str]], Vector]


@dataclass(frozen=True, slots=True)
class Prepared:
    document: DocumentInput
    content_type: ContentType
    content_hash: str
    chunks: list[NewChunk]
    index_texts: list[str]


async def unchanged_versions(store: Store, documents: Sequence[DocumentInput]) -> dict[str, DocumentVersion]:
    """The documents of ``documents`` the store already holds in exactly that version."""
    stored = await store.versions(d.document_id for d in documents)
    return {
        d.document_id: found.version
        for d in documents
        if (found := stored.get(d.document_id)) is not None and found.version == document_version(d)
    }


def prepare(documents: Sequence[DocumentInput], options: ChunkingOptions) -> list[Prepared]:
    """Chunk and tokenize (CPU-bound: runs in a worker thread)."""
    pieces: list[tuple[DocumentInput, ContentType, list[NewChunk], list[str]]] = []
    for document in documents:
        content_type = CONTENT_TYPES[document.content_type]
        chunks: list[NewChunk] = []
        texts: list[str] = []
        seen: set[str] = set()
        for piece in chunk_document(document.text, content_type, options):
            text = index_text(piece.heading, piece.text)
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            chunks.append(NewChunk(len(chunks), piece.start, piece.end, piece.heading, digest, ()))
            texts.append(text)
        pieces.append((document, content_type, chunks, texts))
    # One tokenizer call for the whole batch: its fixed cost per call is several times that of
    # tokenizing one chunk, and a text's tokens do not depend on the texts beside it.
    token_lists = iter(tokenize([t for *_, texts in pieces for t in texts]))
    return [
        Prepared(
            document,
            content_type,
            content_hash(document.text),
            [NewChunk(c.ordinal, c.start, c.end, c.heading, c.content_hash, tuple(next(token_lists))) for c in chunks],
            texts,
        )
        for document, content_type, chunks, texts in pieces
    ]


async def embed_missing(store: Store, embed: Embed | None, prepared: Sequence[Prepared]) -> dict[str, Vector]:
    """Vectors for every chunk hash in ``prepared``: stored ones (any replica's) reused, the rest embedded."""
    if embed is None:
        return {}
    texts = {c.content_hash: t for p in prepared for c, t in zip(p.chunks, p.index_texts, strict=True)}
    vectors = await store.stored_vectors(texts)
    missing = [h for h in texts if h not in vectors]
    if missing:
        embedded = await asyncio.to_thread(embed, [texts[h] for h in missing])
        vectors.update(zip(missing, embedded, strict=True))
    return vectors


def writes(prepared: Sequence[Prepared], vectors: Mapping[str, Vector]) -> list[DocumentWrite]:
    return [
        DocumentWrite(
            document_id=item.document.document_id,
            content_type=item.content_type.value,
            metadata=dict(item.document.metadata),
            text=item.document.text,
            content_hash=item.content_hash,
            chunks=item.chunks,
            vectors={c.content_hash: vectors[c.content_hash] for c in item.chunks if c.content_hash in vectors},
        )
        for item in prepared
    ]
