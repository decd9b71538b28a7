"""Compose an extractive answer from retrieved chunks: quoted sentences, each one cited.

Offline and deterministic: the answer only says what the knowledge base says.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agentmesh.common.v1 import citation_pb2
from agentmesh.rag.v1 import document_pb2

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]?")
_WORD = re.compile(r"\w+")
NO_KNOWLEDGE = "The knowledge base has nothing on this question."


def _terms(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 2}


def compose_answer(
    question: str, results: Sequence[document_pb2.SearchResult], *, max_sentences: int = 3
) -> tuple[str, list[citation_pb2.Citation]]:
    """Pick the sentences sharing most terms with the question, one per cited chunk."""
    question_terms = _terms(question)
    picked: list[tuple[int, str, citation_pb2.Citation]] = []
    for rank, result in enumerate(results):
        best: tuple[int, str] | None = None
        for raw in _SENTENCE.findall(result.citation.quote):
            sentence = raw.strip()
            # Headings name a topic but state nothing; an answer quotes statements.
            if not sentence or sentence.startswith("#"):
                continue
            overlap = len(question_terms & _terms(sentence))
            if best is None or overlap > best[0]:
                best = (overlap, sentence)
        if best is not None and best[0] > 0:
            picked.append((rank, best[1], result.citation))
        if len(picked) == max_sentences:
            break
    if not picked:
        return NO_KNOWLEDGE, []
    answer = " ".join(f"{sentence} [{i + 1}]" for i, (_, sentence, _) in enumerate(picked))
    return answer, [citation for _, _, citation in picked]
