"""The evaluation set is well formed: enough questions, every relevant ID names a document."""

from __future__ import annotations

from eval.rag.__main__ import HERE, load_corpus, load_questions


def test_the_evaluation_set_has_at_least_fifty_questions_with_known_relevant_documents() -> None:
    corpus_ids = {document.document_id for document in load_corpus(HERE / "corpus")}
    questions = load_questions(HERE / "questions.jsonl")
    assert len(questions) >= 50
    assert len({q["id"] for q in questions}) == len(questions), "question IDs are unique"
    for question in questions:
        assert question["question"].strip()
        assert question["relevant"] and set(question["relevant"]) <= corpus_ids, question["id"]
        assert question["style"] in {"direct", "paraphrase"}


def test_every_document_is_relevant_to_some_question() -> None:
    corpus_ids = {document.document_id for document in load_corpus(HERE / "corpus")}
    relevant = {doc for q in load_questions(HERE / "questions.jsonl") for doc in q["relevant"]}
    assert corpus_ids == relevant


def test_every_question_names_the_sentences_that_answer_it_in_its_relevant_documents() -> None:
    texts = {document.document_id: document.text for document in load_corpus(HERE / "corpus")}
    for question in load_questions(HERE / "questions.jsonl"):
        assert question["answers"], question["id"]
        for answer in question["answers"]:
            assert any(answer in texts[d] for d in question["relevant"]), (question["id"], answer)
