"""Decision engines: the offline extractive one, an HTTP (LLM) one, and choosing either by configuration."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import pytest

from eval.rag.chat_double import NOT_FOUND, ChatDouble, quote_first_passage
from runtime.embedding import loaded_minilm
from services.agent.decision import (
    NO_KNOWLEDGE,
    DecisionRequest,
    ExtractiveDecisionEngine,
    HttpDecisionEngine,
    Passage,
    load_decision_engine,
)
from services.agent.decision.extractive import LEXICAL_WEIGHTS, MODEL_NICENESS, Weights
from services.agent.rules import ReviewPolicy
from tests.services.agent.engines import REFUNDS, Recording, SlowEngine

DOCUMENT = "# Refunds\n\nRefunds are processed within 5 business days.\n\nA refund needs the order number."
CHUNK = Passage("refund-policy", "refund-policy#0", 0, len(DOCUMENT), DOCUMENT, 2.0)


async def test_the_extractive_engine_quotes_the_best_sentence_with_exact_offsets() -> None:
    decision = await ExtractiveDecisionEngine().decide(DecisionRequest("run-1", "How long do refunds take?", (CHUNK,)))
    [citation] = decision.citations
    assert decision.answer == "Refunds are processed within 5 business days. [1]"
    assert DOCUMENT[citation.start_offset : citation.end_offset] == citation.quote
    assert not citation.quote.startswith("#")  # headings state nothing
    assert decision.decided_by == "extractive"


async def test_passages_retrieval_ranked_far_below_the_best_are_not_quoted() -> None:
    # "long" is in the question and in this sentence, but retrieval scored its passage at a tenth.
    unrelated = "Passwords must be at least 12 characters long."
    weak = Passage("security", "security#0", 0, len(unrelated), unrelated, 0.2)
    decision = await ExtractiveDecisionEngine().decide(
        DecisionRequest("run-1", "How long do refunds take?", (CHUNK, weak))
    )
    assert [c.document_id for c in decision.citations] == ["refund-policy"]


SECURITY = "Passwords must be at least 12 characters long and are rotated every 180 days."


async def test_a_sentence_sharing_only_words_like_long_or_take_with_the_question_is_not_quoted() -> None:
    # Retrieval scored both passages alike; only the topical word "refunds" makes a sentence an answer.
    security = Passage("security", "security#0", 0, len(SECURITY), SECURITY, CHUNK.score)
    decision = await ExtractiveDecisionEngine().decide(
        DecisionRequest("run-1", "How long do refunds take?", (security, CHUNK))
    )
    assert [c.quote for c in decision.citations] == ["Refunds are processed within 5 business days."]


async def test_a_question_of_weak_words_only_can_still_be_answered_from_them() -> None:
    # Scoring lexically, a sentence needs a topical word of the question; when the question has only weak
    # words, those count. Whether such a vague question is answered at all is the thresholds' call.
    security = Passage("security", "security#0", 0, len(SECURITY), SECURITY, 1.0)
    engine = ExtractiveDecisionEngine(semantic=False)
    candidates = await engine.candidates(DecisionRequest("run-1", "How long?", (security,)))
    decision = engine.choose(candidates, dataclasses.replace(LEXICAL_WEIGHTS, abstain=0.0))
    assert [c.document_id for c in decision.citations] == ["security"]


async def test_dotted_names_and_decimals_do_not_end_a_sentence() -> None:
    text = "Health is `grpc.health.v1.Health`, checked every 0.5 s by probes. Probes call `Check`."
    passage = Passage("health", "health#0", 10, 10 + len(text), text, 1.0)
    candidates = await ExtractiveDecisionEngine(semantic=False).candidates(
        DecisionRequest("run-1", "Which health service?", (passage,))
    )
    citation = candidates[0].citation
    assert [c.citation.quote for c in candidates[1:]] == ["Probes call `Check`."]
    assert citation.quote == "Health is `grpc.health.v1.Health`, checked every 0.5 s by probes."
    assert (citation.start_offset, citation.end_offset) == (10, 10 + len(citation.quote))


async def test_an_answer_in_other_words_ranks_first_and_a_stray_one_does_not() -> None:
    security = Passage("security", "security#0", 0, len(SECURITY), SECURITY, CHUNK.score)
    engine = ExtractiveDecisionEngine()
    candidates = await engine.candidates(
        DecisionRequest("run-1", "When do I get my money back after a return?", (security, CHUNK))
    )
    best = max(candidates, key=lambda c: c.score(engine.weights))
    assert best.citation.quote == "Refunds are processed within 5 business days."


REFLECTION = (
    "Server reflection lets a client ask a running server which services it exposes and fetch their protobuf"
    " descriptors, so tools can build requests without having the `.proto` files. grpcurl and grpcui use it."
    " There are two versions of the protocol, `grpc.reflection.v1` and the older `grpc.reflection.v1alpha`, and"
    " clients differ in which one they try first, so agentmesh serves both. Reflection exposes the API surface,"
    " not data, but operators may still turn it off on internet-facing listeners."
)
HEALTH = (
    "An empty service name stands for the whole server. Load balancers, Consul and Kubernetes probes call the"
    " health service instead of guessing from open ports. agentmesh registers every servicer with the health"
    " servicer at start-up, marks them `SERVING` once the listener is up, and flips them to `NOT_SERVING` as the"
    " first step of shutdown so that traffic moves away before the server stops accepting calls."
)


async def test_the_sentence_that_answers_wins_over_the_ones_sharing_most_words() -> None:
    passage = Passage("reflection", "reflection#0", 0, len(REFLECTION), REFLECTION, 5.0)
    question = "Is it risky to leave reflection on in production?"
    # Which sentence scores best, whatever the thresholds (abstention has its own tests) and without the
    # companion a second sentence within the margin may join it as.
    engine = ExtractiveDecisionEngine()
    candidates = await engine.candidates(DecisionRequest("run-1", question, (passage,)))
    decision = engine.choose(candidates, dataclasses.replace(engine.weights, abstain=0.0, companion=0.0))
    assert [c.quote for c in decision.citations] == [
        "Reflection exposes the API surface, not data, but operators may still turn it off on internet-facing"
        " listeners."
    ]
    # Word overlap alone quotes the sentences that say "reflection" most, not the one about the risk.
    lexical_engine = ExtractiveDecisionEngine(semantic=False)
    candidates = await lexical_engine.candidates(DecisionRequest("run-1", question, (passage,)))
    lexical = lexical_engine.choose(candidates, dataclasses.replace(LEXICAL_WEIGHTS, abstain=0.0))
    assert lexical.citations[0].quote.startswith("Server reflection lets a client ask")


async def test_the_engine_says_the_knowledge_base_does_not_cover_a_question_it_cannot_answer() -> None:
    passage = Passage("health", "health#1", 0, len(HEALTH), HEALTH, 5.0)
    decision = await ExtractiveDecisionEngine().decide(
        DecisionRequest("run-1", "Does the gateway support gzip compression?", (passage, CHUNK))
    )
    assert decision.abstained
    assert (decision.answer, decision.citations) == (NO_KNOWLEDGE, ())
    assert decision.decided_by == "extractive:not-found"


async def test_the_extractive_engine_abstains_when_nothing_matches() -> None:
    decision = await ExtractiveDecisionEngine().decide(DecisionRequest("run-1", "Who is the CEO?", (CHUNK,)))
    assert decision.abstained
    assert decision.citations == ()


async def test_an_answer_scoring_between_the_thresholds_goes_to_review_and_above_them_is_released() -> None:
    engine = ExtractiveDecisionEngine(semantic=False)
    candidates = await engine.candidates(DecisionRequest("run-1", "How long do refunds take?", (CHUNK,)))
    best = max(c.score(Weights(0.0, 1.0, 0.0, 0.5, abstain=0.0, release=0.0)) for c in candidates)
    borderline = Weights(0.0, 1.0, 0.0, 0.5, abstain=best - 0.1, release=best + 0.1)
    assert 0 < engine.choose(candidates, borderline).confidence < ReviewPolicy().min_confidence
    confident = Weights(0.0, 1.0, 0.0, 0.5, abstain=best - 0.2, release=best - 0.1)
    assert engine.choose(candidates, confident).confidence >= ReviewPolicy().min_confidence
    assert engine.choose(candidates, Weights(0.0, 1.0, 0.0, 0.5, abstain=best + 0.01, release=2.0)).abstained


async def test_without_the_sentence_model_the_engine_still_answers_lexically(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(model_cache: Path, **_: object) -> None:
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setattr("services.agent.decision.extractive.shared_minilm", missing)
    monkeypatch.setattr("services.agent.decision.extractive.loaded_minilm", lambda **_: None)
    engine = ExtractiveDecisionEngine()
    await engine.warm_up()
    decision = await engine.decide(DecisionRequest("run-1", "How long do refunds take?", (CHUNK,)))
    assert engine.weights == LEXICAL_WEIGHTS
    assert [c.quote for c in decision.citations] == ["Refunds are processed within 5 business days."]


@pytest.mark.parametrize(("options", "niceness"), [({}, MODEL_NICENESS), ({"model_niceness": 0}, 0)])
async def test_the_engine_asks_for_its_model_below_the_agents_own_priority_unless_told(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], niceness: int
) -> None:
    asked: list[dict[str, object]] = []

    def recorded(model_cache: Path, **kwargs: object) -> None:
        asked.append(kwargs)
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setattr("services.agent.decision.extractive.shared_minilm", recorded)
    monkeypatch.setattr("services.agent.decision.extractive.loaded_minilm", lambda **_: None)
    engine = ExtractiveDecisionEngine(**options)
    await engine.warm_up()
    assert asked == [{"niceness": niceness}]
    assert MODEL_NICENESS > 0  # decisions are background work: the model yields to the serving loop


@pytest.mark.parametrize("niceness", [-5, 20, "10", True])
def test_a_model_niceness_a_process_cannot_give_itself_is_refused_when_the_engine_is_built(niceness: object) -> None:
    with pytest.raises(ValueError, match="model_niceness must be a whole number from 0 to 19"):
        load_decision_engine("extractive", {"model_niceness": niceness})


def test_engines_are_chosen_by_name_or_import_path_with_their_options() -> None:
    assert isinstance(load_decision_engine("extractive"), ExtractiveDecisionEngine)
    assert isinstance(load_decision_engine("http", {"url": "http://127.0.0.1:1/decide"}), HttpDecisionEngine)
    engine = load_decision_engine("tests.services.agent.engines:SlowEngine", {"delay_s": 0.5})
    assert isinstance(engine, SlowEngine)


def test_an_unknown_engine_or_a_non_engine_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match="use one of \\['extractive', 'http'\\]"):
        load_decision_engine("gpt")
    with pytest.raises(TypeError, match="not a DecisionEngine"):
        load_decision_engine("tests.services.agent.engines:StaticRetriever")


async def test_the_http_engine_sends_numbered_passages_and_maps_cited_indexes(
    llm: tuple[str, list[dict[str, Any]]],
) -> None:
    base, received = llm
    engine = load_decision_engine("http", {"url": f"{base}/decide"})
    decision = await engine.decide(DecisionRequest("run-1", "How long do refunds take?", (REFUNDS,)))
    await engine.close()

    assert received[0]["passages"][0]["index"] == 1
    assert received[0]["passages"][0]["text"] == REFUNDS.text
    assert decision.answer == "Five business days [1]."
    # Index 7 does not exist: dropped rather than invented.
    assert [c.chunk_id for c in decision.citations] == [REFUNDS.chunk_id]
    assert (decision.confidence, decision.decided_by) == (0.8, "http")


async def test_the_http_engine_speaks_openai_compatible_chat_completions(
    llm: tuple[str, list[dict[str, Any]]],
) -> None:
    base, received = llm
    engine = load_decision_engine(
        "http", {"url": f"{base}/v1/chat/completions", "protocol": "openai-chat", "model": "local-model"}
    )
    decision = await engine.decide(DecisionRequest("run-1", "How long do refunds take?", (REFUNDS,)))
    await engine.close()

    assert received[0]["model"] == "local-model"
    assert "[1] Refunds are processed" in received[0]["messages"][1]["content"]
    assert decision.answer == "Refunds take five business days [1]."
    assert [c.document_id for c in decision.citations] == ["refund-policy"]
    assert decision.confidence == 0.6


async def test_an_http_engine_error_surfaces_so_the_workflow_falls_back() -> None:
    engine = HttpDecisionEngine(url="http://127.0.0.1:9/unreachable", timeout=2)
    with pytest.raises(Exception):  # noqa: B017 - any transport error; the workflow catches them all
        await engine.decide(DecisionRequest("run-1", "q?", (REFUNDS,)))
    await engine.close()


async def test_the_http_engine_against_the_scripted_chat_double_cites_or_abstains() -> None:
    async with ChatDouble(quote_first_passage) as double:
        engine = load_decision_engine("http", {"url": double.url, "protocol": "openai-chat", "model": "double"})
        answered = await engine.decide(DecisionRequest("run-1", "How long do refunds take?", (REFUNDS,)))
        nothing = await engine.decide(DecisionRequest("run-2", "Who is the CEO?", ()))
        await engine.close()
    assert answered.answer == "Refunds are processed within 5 business days. [1]"
    assert [c.document_id for c in answered.citations] == ["refund-policy"]
    assert (nothing.answer, nothing.citations, nothing.abstained) == (NOT_FOUND, (), True)
    assert nothing.decided_by == "http:not-found"
    assert double.requests[0]["model"] == "double"


async def test_until_the_model_has_loaded_the_engine_answers_lexically_instead_of_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()

    def slow_model(model_cache: Path, **_: object) -> object:
        release.wait(10)
        raise ImportError("still loading, then missing")

    monkeypatch.setattr("services.agent.decision.extractive.shared_minilm", slow_model)
    monkeypatch.setattr("services.agent.decision.extractive.loaded_minilm", lambda **_: None)
    engine = ExtractiveDecisionEngine()
    decision = await engine.decide(DecisionRequest("run-1", "How long do refunds take?", (CHUNK,)))
    release.set()
    assert engine.weights == LEXICAL_WEIGHTS
    assert [c.quote for c in decision.citations] == ["Refunds are processed within 5 business days."]


async def test_a_sentence_is_read_under_its_chunks_heading_path_when_retrieval_gives_one() -> None:
    model = loaded_minilm(niceness=MODEL_NICENESS)
    if model is None:
        pytest.skip("the sentence model is not installed (dense extra)")
    text = "## Backoff\n\nThe delay grows with each attempt."
    recording = Recording(model)
    engine = ExtractiveDecisionEngine(embedder=recording, embedding_cache_size=0)
    request = DecisionRequest("run-1", "How long between retries?", ())
    # The path names the document's title too ("Retry policy"), which the chunk's own heading line does not.
    with_path = Passage("retries", "retries#1", 10, 10 + len(text), text, 1.0, heading="Retry policy > Backoff")
    await engine.candidates(dataclasses.replace(request, passages=(with_path,)))
    assert "Retry policy > Backoff: The delay grows with each attempt." in recording.batches[-1]
    # Without one (an older RAG), the heading line above the sentence is what it is read under.
    await engine.candidates(dataclasses.replace(request, passages=(dataclasses.replace(with_path, heading=""),)))
    assert "Backoff: The delay grows with each attempt." in recording.batches[-1]


async def test_a_sentence_naming_no_value_does_not_answer_a_question_asking_for_one() -> None:
    text = "# Sessions\n\nA session expires after an idle period. The idle period is thirty minutes."
    passage = Passage("sessions", "sessions#0", 0, len(text), text, 1.0)
    engine = ExtractiveDecisionEngine()
    candidates = await engine.candidates(
        DecisionRequest("run-1", "How long is the idle period of a session?", (passage,))
    )
    assert [(c.citation.quote, c.unmet) for c in candidates] == [
        ("A session expires after an idle period.", 1.0),
        ("The idle period is thirty minutes.", 0.0),
    ]
    # A question that asks for no value holds no sentence to that.
    candidates = await engine.candidates(DecisionRequest("run-1", "When does a session expire?", (passage,)))
    assert [c.unmet for c in candidates] == [0.0, 0.0]


def test_a_passage_keeps_its_heading_path_through_a_saved_run_and_reads_runs_saved_without_one() -> None:
    passage = Passage("retries", "retries#1", 10, 20, "The delay grows.", 1.0, heading="Retry policy > Backoff")
    assert Passage.from_dict(passage.to_dict()) == passage
    older = {k: v for k, v in passage.to_dict().items() if k != "heading"}
    assert Passage.from_dict(older) == dataclasses.replace(passage, heading="")
