from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from services.rag.chunking import ChunkingOptions
from services.rag.errors import DenseRetrievalDisabled, DocumentNotFound, InvalidArgument
from services.rag.knowledge_base import DocumentInput, IngestOutcome, KnowledgeBase, Mode, chunk_id
from tests.services.rag.conftest import SMALL_LIMITS, HashingEmbedder
from tests.system import wait_until

RETRIES = DocumentInput(
    "guide/retries",
    "# Retries\n\nA retry policy lives in the service config. Retries back off exponentially with jitter.\n\n"
    "## Budgets\n\nA retry budget caps the extra load that retries add to a struggling backend.",
    {"team": "platform", "kind": "guide"},
    "text/markdown",
)
DEADLINES = DocumentInput(
    "guide/deadlines",
    "Every call carries a deadline. Each hop subtracts the time it spent before calling the next one.",
    {"team": "platform", "kind": "faq"},
)
BILLING = DocumentInput(
    "billing/invoices",
    "Invoices are issued monthly. A retry of a failed card payment happens after three days.",
    {"team": "billing", "kind": "faq"},
)


async def test_ingest_then_search_returns_the_relevant_chunk_with_offsets_and_score(
    kb: KnowledgeBase,
) -> None:
    results = await kb.ingest([RETRIES, DEADLINES, BILLING])
    assert [r.outcome for r in results] == [IngestOutcome.CREATED] * 3

    hits = await kb.search("how does the retry budget limit load", top_k=3)
    assert hits, "a matching chunk is found"
    best = hits[0]
    assert best.chunk.document_id == "guide/retries"
    assert "retry budget" in best.chunk.text
    assert RETRIES.text[best.chunk.start : best.chunk.end] == best.chunk.text
    assert best.chunk.heading == "Retries > Budgets"
    assert best.score > 0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert chunk_id(best.chunk) == f"guide/retries#{best.chunk.ordinal}"


async def test_top_k_bounds_the_number_of_results(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES, DEADLINES, BILLING])
    assert len(await kb.search("retry", top_k=1)) == 1


async def test_get_returns_the_document_with_its_metadata_and_hash(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES])
    stored = await kb.get("guide/retries")
    assert stored.text == RETRIES.text
    assert stored.record.metadata == {"team": "platform", "kind": "guide"}
    assert stored.record.content_type == "text/markdown"
    assert len(stored.record.content_hash) == 64
    assert stored.record.chunk_count >= 2


async def test_delete_removes_the_document_and_its_chunks_from_search(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES, BILLING])
    await kb.delete("guide/retries")
    with pytest.raises(DocumentNotFound):
        await kb.get("guide/retries")
    hits = await kb.search("retry budget", top_k=5)
    assert {h.chunk.document_id for h in hits} == {"billing/invoices"}


async def test_deleting_a_missing_document_is_not_found(kb: KnowledgeBase) -> None:
    with pytest.raises(DocumentNotFound):
        await kb.delete("nope")


async def test_metadata_filter_keeps_only_documents_matching_every_pair(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES, DEADLINES, BILLING])
    billing = await kb.search("retry", top_k=5, metadata_filter={"team": "billing"})
    assert {h.chunk.document_id for h in billing} == {"billing/invoices"}
    platform_faq = await kb.search("deadline retry", top_k=5, metadata_filter={"team": "platform", "kind": "faq"})
    assert {h.chunk.document_id for h in platform_faq} == {"guide/deadlines"}
    assert await kb.search("retry", top_k=5, metadata_filter={"team": "nobody"}) == []


async def test_reingesting_an_id_replaces_its_chunks(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES])
    replacement = DocumentInput("guide/retries", "Hedging sends a second request after a delay.", {"team": "platform"})
    [result] = await kb.ingest([replacement])
    assert result.outcome is IngestOutcome.REPLACED
    assert result.chunk_count == 1
    assert await kb.search("retry budget", top_k=5) == []
    [hit] = await kb.search("hedging delay", top_k=5)
    assert hit.chunk.text == replacement.text
    assert (await kb.get("guide/retries")).record.metadata == {"team": "platform"}


async def test_reingesting_identical_content_changes_nothing(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES])
    generation = kb.generation
    [result] = await kb.ingest([RETRIES])
    assert result.outcome is IngestOutcome.UNCHANGED
    assert kb.generation == generation


async def test_identical_text_under_two_ids_is_returned_once(kb: KnowledgeBase) -> None:
    copy = DocumentInput("mirror/deadlines", DEADLINES.text, {"team": "mirror"})
    await kb.ingest([DEADLINES, copy])
    hits = await kb.search("deadline hop", top_k=5)
    assert len(hits) == 1
    # Both documents exist and are filterable; only duplicate results are collapsed.
    [mirrored] = await kb.search("deadline hop", top_k=5, metadata_filter={"team": "mirror"})
    assert mirrored.chunk.document_id == "mirror/deadlines"


async def test_repeated_paragraphs_in_one_document_are_indexed_once(kb: KnowledgeBase) -> None:
    # Each paragraph is close to the chunk size (200), so each is a chunk of its own.
    boilerplate = "Questions about this runbook go to the platform team on the ops channel" + "," * 90 + "."
    body = "The runbook steps restart the gateway pods one at a time while traffic drains" + "," * 90 + "."
    [result] = await kb.ingest([DocumentInput("x", f"{boilerplate}\n\n{body}\n\n{boilerplate}")])
    texts = [c.text for c in kb.snapshot.chunks]  # read back from the index on disk
    assert texts == [boilerplate, body]
    assert result.chunk_count == 2


async def test_documents_and_indexes_survive_a_restart(tmp_path: Path) -> None:
    kb = await KnowledgeBase.open(tmp_path, chunking=ChunkingOptions(size=200, overlap=40), save_delay_s=60)
    await kb.ingest([RETRIES, DEADLINES, BILLING])
    await kb.delete("billing/invoices")
    before = [(h.chunk.key, h.score) for h in await kb.search("retry budget deadline", top_k=5)]
    await kb.close()
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["generation"] == kb.generation

    reopened = await KnowledgeBase.open(tmp_path, chunking=ChunkingOptions(size=200, overlap=40))
    try:
        assert reopened.snapshot.restored, "the saved indexes are loaded, not rebuilt"
        assert [(h.chunk.key, h.score) for h in await reopened.search("retry budget deadline", top_k=5)] == before
        assert (await reopened.get("guide/deadlines")).text == DEADLINES.text
        with pytest.raises(DocumentNotFound):
            await reopened.get("billing/invoices")
        # New writes after a restart get fresh chunk keys and are searchable.
        await reopened.ingest([BILLING])
        assert {h.chunk.document_id for h in await reopened.search("invoices", top_k=5)} == {"billing/invoices"}
    finally:
        await reopened.close()


async def test_indexes_a_generation_behind_apply_only_the_missing_change_at_start(tmp_path: Path) -> None:
    kb = await KnowledgeBase.open(tmp_path, save_delay_s=60)
    await kb.ingest([RETRIES])
    await kb.ingest([DEADLINES])
    chunks = len(kb.snapshot.chunks)
    await kb.close()
    # A crash after the index commit but before the manifest was written leaves the manifest one
    # generation behind the index: re-applying that change is harmless.
    manifest_path = tmp_path / "index" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["generation"] -= 1
    manifest_path.write_text(json.dumps(manifest))

    reopened = await KnowledgeBase.open(tmp_path)
    try:
        assert reopened.snapshot.restored
        assert reopened.indexes.indexed_per_catch_up == [1], "only the document of the missing generation"
        assert len(reopened.snapshot.chunks) == chunks
        assert [h.chunk.document_id for h in await reopened.search("deadline hop", top_k=5)] == ["guide/deadlines"]
    finally:
        await reopened.close()


async def test_concurrent_ingestion_and_search_see_consistent_results(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES])

    async def writer(n: int) -> None:
        for i in range(5):
            await kb.ingest([DocumentInput(f"w{n}/{i}", f"Writer {n} note {i} about circuit breakers and retries.")])

    async def reader() -> int:
        searches = 0
        for _ in range(20):
            hits = await kb.search("retry budget", top_k=5)
            # The original document is always visible, whatever is being ingested meanwhile.
            assert any(h.chunk.document_id == "guide/retries" for h in hits)
            searches += 1
            await asyncio.sleep(0)
        return searches

    results = await asyncio.wait_for(asyncio.gather(writer(1), writer(2), writer(3), reader(), reader()), timeout=30)
    assert list(results[3:]) == [20, 20]
    hits = await kb.search("circuit breakers", top_k=20)
    assert len({h.chunk.document_id for h in hits}) == 15


async def test_an_ingest_returns_only_once_its_documents_are_searchable(kb: KnowledgeBase) -> None:
    await asyncio.gather(*(kb.ingest([DocumentInput(f"d{i}", f"Token{i} appears here.")]) for i in range(6)))
    for i in range(6):
        assert [h.chunk.document_id for h in await kb.search(f"token{i}", top_k=1)] == [f"d{i}"]


async def test_a_failed_batch_stores_none_of_its_documents(kb: KnowledgeBase) -> None:
    too_big = DocumentInput("big", "x " * SMALL_LIMITS.max_document_bytes)
    with pytest.raises(InvalidArgument):
        await kb.ingest([DEADLINES, too_big])
    with pytest.raises(DocumentNotFound):
        await kb.get("guide/deadlines")


@pytest.mark.parametrize(
    ("query", "top_k", "metadata_filter", "field"),
    [
        ("", 5, {}, "query"),
        ("   ", 5, {}, "query"),
        ("q" * 2001, 5, {}, "query"),
        ("retry", 0, {}, "top_k"),
        ("retry", SMALL_LIMITS.max_top_k + 1, {}, "top_k"),
        ("retry", -1, {}, "top_k"),
        ("retry", 5, {"colour": "blue"}, "metadata_filter['colour']"),
    ],
)
async def test_bad_search_input_is_rejected_naming_the_field(
    kb: KnowledgeBase, query: str, top_k: int, metadata_filter: dict[str, str], field: str
) -> None:
    await kb.ingest([RETRIES])
    with pytest.raises(InvalidArgument) as caught:
        await kb.search(query, top_k=top_k, metadata_filter=metadata_filter)
    assert caught.value.fields == [field]


async def test_an_unknown_filter_field_error_lists_the_known_fields(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES])
    with pytest.raises(InvalidArgument, match=r"unknown filter field.*known: kind, team"):
        await kb.search("retry", top_k=5, metadata_filter={"colour": "blue"})


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (DocumentInput("ok", "x" * (SMALL_LIMITS.max_document_bytes + 1)), "documents[1].text"),
        (DocumentInput("ok", "é" * (SMALL_LIMITS.max_document_bytes // 2 + 1)), "documents[1].text"),
        (DocumentInput("ok", "  \n"), "documents[1].text"),
        (DocumentInput("", "text"), "documents[1].document_id"),
        (DocumentInput("has space", "text"), "documents[1].document_id"),
        (DocumentInput("x" * 129, "text"), "documents[1].document_id"),
        (DocumentInput("ok", "text", content_type="application/pdf"), "documents[1].content_type"),
        (DocumentInput("ok", "text", metadata={"": "v"}), "documents[1].metadata['']"),
        (DocumentInput("ok", "text", metadata={"k": "v" * 257}), "documents[1].metadata['k']"),
        (DocumentInput("guide/deadlines", "text"), "documents[1].document_id"),
    ],
)
async def test_bad_documents_are_rejected_naming_the_field(
    kb: KnowledgeBase, document: DocumentInput, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await kb.ingest([DEADLINES, document])
    assert caught.value.fields == [field]


async def test_every_violation_is_reported_at_once(kb: KnowledgeBase) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await kb.ingest([DocumentInput("bad id", "", content_type="text/html")])
    assert caught.value.fields == ["documents[0].document_id", "documents[0].text", "documents[0].content_type"]
    with pytest.raises(InvalidArgument) as caught:
        await kb.search(" ", top_k=0)
    assert caught.value.fields == ["query", "top_k"]


async def test_an_oversized_document_error_states_the_limit(kb: KnowledgeBase) -> None:
    with pytest.raises(InvalidArgument, match=f"limit is {SMALL_LIMITS.max_document_bytes} bytes"):
        await kb.ingest([DocumentInput("big", "x" * (SMALL_LIMITS.max_document_bytes + 1))])


async def test_batches_are_bounded(kb: KnowledgeBase) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await kb.ingest([])
    assert caught.value.fields == ["documents"]
    too_many = [DocumentInput(f"d{i}", "text") for i in range(SMALL_LIMITS.max_batch_documents + 1)]
    with pytest.raises(InvalidArgument, match="at most 10 documents"):
        await kb.ingest(too_many)


async def test_dense_modes_need_an_embedder(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES])
    assert not kb.dense_enabled
    for mode in (Mode.DENSE, Mode.HYBRID):
        with pytest.raises(DenseRetrievalDisabled):
            await kb.search("retry", top_k=5, mode=mode)


async def test_single_characters_and_digits_are_searchable(kb: KnowledgeBase) -> None:
    await kb.ingest([DocumentInput("steps", "Step 7 restarts the pods."), DocumentInput("other", "Step 8 drains.")])
    [hit, *_] = await kb.search("step 7", top_k=2)
    assert hit.chunk.document_id == "steps"


async def test_a_batch_reports_unchanged_and_new_documents_separately(kb: KnowledgeBase) -> None:
    await kb.ingest([RETRIES])
    results = await kb.ingest([RETRIES, DEADLINES])
    assert [(r.document_id, r.outcome) for r in results] == [
        ("guide/retries", IngestOutcome.UNCHANGED),
        ("guide/deadlines", IngestOutcome.CREATED),
    ]


async def test_changing_only_metadata_replaces_the_document(kb: KnowledgeBase) -> None:
    await kb.ingest([DEADLINES])
    moved = DocumentInput(DEADLINES.document_id, DEADLINES.text, {"team": "edge"})
    [result] = await kb.ingest([moved])
    assert result.outcome is IngestOutcome.REPLACED
    [hit] = await kb.search("deadline", top_k=5, metadata_filter={"team": "edge"})
    assert hit.document.metadata == {"team": "edge"}


async def test_dense_indexes_saved_for_another_model_are_rebuilt(tmp_path: Path) -> None:
    first = await KnowledgeBase.open(tmp_path, embedder=HashingEmbedder(model_name="a", dimensions=16))
    await first.ingest([RETRIES, DEADLINES])
    await first.close()
    second = await KnowledgeBase.open(tmp_path, embedder=HashingEmbedder(model_name="b", dimensions=32))
    try:
        assert not second.snapshot.restored
        [best, *_] = await second.search("deadline hop", top_k=2, mode=Mode.DENSE)
        assert best.chunk.document_id == "guide/deadlines"
    finally:
        await second.close()


async def test_a_cancelled_ingest_still_commits_and_becomes_searchable(kb: KnowledgeBase) -> None:
    task = asyncio.create_task(kb.ingest([DEADLINES]))

    async def committing() -> bool:
        return kb.writes_in_flight > 0

    # Let it reach the shielded commit, then give up on it, as a handler past its deadline would.
    await wait_until(committing, timeout_s=10, interval_s=0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(kb.settle(), timeout=10)
    assert [h.chunk.document_id for h in await kb.search("deadline", top_k=1)] == ["guide/deadlines"]


async def test_batches_that_do_not_wait_are_indexed_by_the_next_one_that_does(kb: KnowledgeBase) -> None:
    for i in range(5):
        await kb.ingest([DocumentInput(f"b{i}", f"Background batch {i} about quotas.")], wait_searchable=False)
    # The last batch changes nothing, yet returning means everything before it is searchable.
    [result] = await kb.ingest([DocumentInput("b4", "Background batch 4 about quotas.")])
    assert result.outcome is IngestOutcome.UNCHANGED
    assert len(await kb.search("quotas", top_k=10)) == 5


async def test_settle_waits_for_background_indexing(kb: KnowledgeBase) -> None:
    await kb.ingest([DEADLINES], wait_searchable=False)
    await asyncio.wait_for(kb.settle(), timeout=10)
    assert kb.snapshot.generation == kb.generation
    assert await kb.search("deadline", top_k=1)
