"""The extractive engine embeds a recurring sentence once, and decides exactly as it does without the cache."""

from __future__ import annotations

import pytest

from runtime.embedding import Embedder, loaded_minilm
from services.agent.decision import DecisionRequest, ExtractiveDecisionEngine, Passage
from services.agent.decision.extractive import MODEL_NICENESS
from tests.services.agent.engines import Recording

REFUNDS = "Refunds are processed within 5 business days. A refund needs the order number and the receipt."
SHIPPING = "Orders ship within 2 business days. Express shipping arrives the next business day."
PASSAGES = (
    Passage("refund-policy", "refund-policy#0", 0, len(REFUNDS), REFUNDS, 2.0),
    Passage("shipping", "shipping#0", 0, len(SHIPPING), SHIPPING, 1.5),
)
QUESTIONS = ("How long do refunds take?", "What does a refund need?", "When do orders ship?", "How fast is express?")


@pytest.fixture
def model() -> Embedder:
    loaded = loaded_minilm(niceness=MODEL_NICENESS)
    if loaded is None:
        pytest.skip("the sentence model is not installed (dense extra)")
    return loaded


async def test_sentences_seen_for_one_question_are_not_embedded_again_and_decisions_do_not_change(
    model: Embedder,
) -> None:
    recording = Recording(model)
    cached = ExtractiveDecisionEngine(embedder=recording)
    uncached = ExtractiveDecisionEngine(embedder=model, embedding_cache_size=0)
    for question in QUESTIONS:
        request = DecisionRequest("run-1", question, PASSAGES)
        with_cache, without = await cached.candidates(request), await uncached.candidates(request)
        assert [c.similarity for c in with_cache] == pytest.approx([c.similarity for c in without], abs=1e-5)
        # The same sentences, whatever batch they were embedded in; the vectors agree to float rounding.
        decided, expected = await cached.decide(request), await uncached.decide(request)
        assert (decided.answer, decided.citations) == (expected.answer, expected.citations)
        assert decided.confidence == pytest.approx(expected.confidence, abs=1e-5)
    sentences = [c.citation.quote for c in with_cache]
    assert recording.batches == [[QUESTIONS[0], *sentences], *([q] for q in QUESTIONS[1:])]


def test_a_bad_cache_size_is_refused_when_the_engine_is_built() -> None:
    with pytest.raises(ValueError, match="embedding_cache_size must be a whole number of entries"):
        ExtractiveDecisionEngine(embedding_cache_size=-5)


async def test_a_question_prepared_ahead_is_embedded_once_and_decided_as_without(model: Embedder) -> None:
    recording = Recording(model)
    engine = ExtractiveDecisionEngine(embedder=recording)
    plain = ExtractiveDecisionEngine(embedder=model)
    for question in QUESTIONS:
        engine.prepare(question)  # the workflow's validation step, while retrieval still runs
        engine.prepare(question)  # a second call while the first is in flight starts nothing
        request = DecisionRequest("run-1", question, PASSAGES)
        decided, expected = await engine.decide(request), await plain.decide(request)
        assert (decided.answer, decided.citations) == (expected.answer, expected.citations)
        assert decided.confidence == pytest.approx(expected.confidence, abs=1e-5)
    sentences = [c.citation.quote for c in await plain.candidates(DecisionRequest("run-1", QUESTIONS[0], PASSAGES))]
    # Each question once, on its own, before its decision; the sentences once, by the first decision.
    assert recording.batches == [[QUESTIONS[0]], sentences, *([q] for q in QUESTIONS[1:])]
