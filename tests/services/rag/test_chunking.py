from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from services.rag.chunking import ChunkingOptions, ContentType, chunk_document

GUIDE = """# Guide

Intro sentence one. Intro sentence two, e.g. this is not a break.

## Retries

Retries are configured in the service config. They use exponential backoff.

```sh
# a shell comment, not a heading
grpcurl -plaintext localhost:50051 list
```

### Budgets
Retry budgets cap the extra load.
"""


def test_every_chunk_is_the_exact_slice_of_the_source_at_its_offsets() -> None:
    for chunk in chunk_document(GUIDE, ContentType.MARKDOWN, ChunkingOptions(size=64, overlap=16)):
        assert GUIDE[chunk.start : chunk.end] == chunk.text


def test_markdown_headings_start_sections_and_chunks_carry_the_heading_path() -> None:
    chunks = chunk_document(GUIDE, ContentType.MARKDOWN, ChunkingOptions(size=400, overlap=0))
    assert [c.heading for c in chunks] == ["Guide", "Guide > Retries", "Guide > Retries > Budgets"]
    assert chunks[2].text == "### Budgets\nRetry budgets cap the extra load."


def test_hash_lines_inside_fenced_code_are_not_headings() -> None:
    chunks = chunk_document(GUIDE, ContentType.MARKDOWN, ChunkingOptions(size=400, overlap=0))
    assert all("a shell comment" not in c.heading for c in chunks)
    assert "# a shell comment" in chunks[1].text


def test_underlined_setext_headings_start_sections_too() -> None:
    text = "Guide\n=====\n\nIntro.\n\nRetries\n-------\nThey back off.\n"
    chunks = chunk_document(text, ContentType.MARKDOWN, ChunkingOptions(size=400, overlap=0))
    assert [(c.heading, c.text) for c in chunks] == [
        ("Guide", "Guide\n=====\n\nIntro."),
        ("Guide > Retries", "Retries\n-------\nThey back off."),
    ]


def test_thematic_breaks_and_list_items_are_not_setext_headings() -> None:
    text = "# Notes\n\nA paragraph.\n\n---\n\n- an item\n---\n"
    chunks = chunk_document(text, ContentType.MARKDOWN, ChunkingOptions(size=400, overlap=0))
    assert {c.heading for c in chunks} == {"Notes"}


def test_plain_text_has_no_sections() -> None:
    chunks = chunk_document(GUIDE, ContentType.PLAIN_TEXT, ChunkingOptions(size=4000, overlap=0))
    assert len(chunks) == 1
    assert chunks[0].heading == ""


def test_chunks_break_on_sentence_boundaries_and_respect_the_size() -> None:
    text = " ".join(f"Sentence number {i} talks about topic {i}." for i in range(40))
    chunks = chunk_document(text, ContentType.PLAIN_TEXT, ChunkingOptions(size=120, overlap=0))
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(chunk.text) <= 120
        assert chunk.text.startswith("Sentence number") and chunk.text.endswith(".")


def test_a_lowercase_word_after_a_period_is_not_a_sentence_break() -> None:
    text = "Use a deadline, e.g. five seconds, on every call. Then retry."
    chunks = chunk_document(text, ContentType.PLAIN_TEXT, ChunkingOptions(size=50, overlap=0))
    assert chunks[0].text == "Use a deadline, e.g. five seconds, on every call."


def test_consecutive_chunks_overlap_by_whole_sentences() -> None:
    text = " ".join(f"Fact {i} is here." for i in range(30))
    chunks = chunk_document(text, ContentType.PLAIN_TEXT, ChunkingOptions(size=80, overlap=30))
    for before, after in itertools.pairwise(chunks):
        assert after.start < before.end, "the next chunk starts inside the previous one"
        assert after.text.startswith("Fact ")
        assert after.end > before.end, "every chunk adds new text"


def test_a_sentence_longer_than_the_size_is_split_at_spaces() -> None:
    text = "word " * 100
    chunks = chunk_document(text, ContentType.PLAIN_TEXT, ChunkingOptions(size=64, overlap=0))
    assert all(len(c.text) <= 64 and not c.text.startswith(" ") for c in chunks)
    assert sum(c.text.count("word") for c in chunks) == 100


def test_whitespace_only_text_gives_no_chunks() -> None:
    assert chunk_document(" \n\n\t ", ContentType.MARKDOWN, ChunkingOptions()) == []


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab #.!?\n-`~Z1")), max_size=400),
    size=st.integers(min_value=32, max_value=120),
    markdown=st.booleans(),
)
def test_chunks_cover_all_text_in_order_within_the_size(text: str, size: int, markdown: bool) -> None:
    content_type = ContentType.MARKDOWN if markdown else ContentType.PLAIN_TEXT
    chunks = chunk_document(text, content_type, ChunkingOptions(size=size, overlap=size // 4))
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert 0 < len(chunk.text) <= size
        assert chunk.text == chunk.text.strip()
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    covered: set[int] = set()
    for chunk in chunks:
        covered.update(range(chunk.start, chunk.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
