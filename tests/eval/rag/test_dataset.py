"""The evaluation set is well formed: enough questions of each kind, two halves that share nothing."""

from __future__ import annotations

import hashlib
import re

from eval.rag.__main__ import HERE, SPLITS, STYLES, load_corpus, load_questions

QUESTIONS = load_questions(HERE / "questions.jsonl")


def test_the_evaluation_set_has_answerable_questions_with_known_relevant_documents() -> None:
    corpus_ids = {document.document_id for document in load_corpus(HERE / "corpus")}
    assert len({q["id"] for q in QUESTIONS}) == len(QUESTIONS), "question IDs are unique"
    for question in QUESTIONS:
        assert question["question"].strip()
        assert set(question["relevant"]) <= corpus_ids, question["id"]
        assert question["style"] in STYLES, question["id"]
    answerable = [q for q in QUESTIONS if q["relevant"]]
    assert len(answerable) >= 200
    # At least a third phrased as users do, not in the documents' words.
    assert sum(q["style"] != "verbatim" for q in answerable) >= len(answerable) / 3


def test_at_least_twenty_in_domain_questions_have_no_answer_in_the_corpus() -> None:
    unanswerable = [q for q in QUESTIONS if not q["relevant"]]
    assert len(unanswerable) >= 20
    assert all(not q["answers"] for q in unanswerable)


def test_every_question_is_in_exactly_one_half_and_no_question_is_in_both() -> None:
    assert {q["split"] for q in QUESTIONS} == set(SPLITS)
    normalized = {
        split: {" ".join(re.findall(r"\w+", q["question"].lower())) for q in QUESTIONS if q["split"] == split}
        for split in SPLITS
    }
    assert not normalized["tuning"] & normalized["held-out"]
    # Each half holds questions of every kind, so each can be read on its own.
    for split in SPLITS:
        half = [q for q in QUESTIONS if q["split"] == split]
        assert {q["style"] for q in half if q["relevant"]} == set(STYLES), split
        assert sum(not q["relevant"] for q in half) >= 10, split


def test_the_halves_follow_the_documented_rule() -> None:
    # eval/rag/README.md: by the parity of the first byte of sha256(id), except the questions quoted in the
    # issue that motivated the engine, which are all tuning (their failures were seen before any tuning).
    seen_before = {"q107", "q108", "q240", "q241", "q242", "q243"}
    for question in QUESTIONS:
        odd = hashlib.sha256(question["id"].encode()).digest()[0] % 2 == 1
        expected = "tuning" if question["id"] in seen_before or not odd else "held-out"
        assert question["split"] == expected, question["id"]


def test_every_document_is_relevant_to_some_question() -> None:
    corpus_ids = {document.document_id for document in load_corpus(HERE / "corpus")}
    relevant = {doc for q in QUESTIONS for doc in q["relevant"]}
    assert corpus_ids == relevant


def test_every_answerable_question_names_the_sentences_that_answer_it_in_its_relevant_documents() -> None:
    texts = {document.document_id: document.text for document in load_corpus(HERE / "corpus")}
    for question in QUESTIONS:
        if not question["relevant"]:
            continue
        assert question["answers"], question["id"]
        for answer in question["answers"]:
            assert any(answer in texts[d] for d in question["relevant"]), (question["id"], answer)
