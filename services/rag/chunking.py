"""Split a document into retrieval chunks on heading and sentence boundaries.

Every chunk is an exact slice of the source text (``text[start:end]``), so a citation
can point at the characters a reader will find in the original document. Markdown
headings (outside fenced code) start a new section and no chunk spans two sections; each
chunk carries its heading path, which the indexes see as context for the chunk's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class ContentType(StrEnum):
    PLAIN_TEXT = "text/plain"
    MARKDOWN = "text/markdown"


@dataclass(frozen=True, slots=True)
class ChunkingOptions:
    """Target chunk size and overlap, both in characters."""

    size: int = 800
    overlap: int = 120

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError("chunk size must be at least 32 characters")
        if not 0 <= self.overlap < self.size // 2:
            raise ValueError("chunk overlap must be >= 0 and below half the chunk size")


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    start: int
    end: int
    # Markdown heading path ("Guide > Retries"); empty for plain text or text before any heading.
    heading: str


def index_text(heading: str, text: str) -> str:
    """What the indexes see of a chunk: its heading path gives it context ("Retries" under "Envoy > Routes")."""
    return f"{heading}\n{text}" if heading else text


_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_NOT_A_TITLE = re.compile(r"^ {0,3}(?:[-*+>|]|\d+[.)])(?:\s|$)|^ {4}")
# A unit ends at a blank line, after sentence-final punctuation followed by something that
# starts a sentence, or before a list item. Lowercase after a period ("e.g. this") is not a break.
_UNIT_BREAK = re.compile(
    r"\n[ \t]*\n\s*"
    r"|(?<=[.!?])[\"')\]]*[ \t\n]+(?=[A-Z0-9\"'(\[`*_])"
    r"|\n(?=[ \t]*(?:[-*+]|\d+[.)])[ \t])"
)


@dataclass(frozen=True, slots=True)
class _Section:
    start: int
    end: int
    heading: str


def chunk_document(text: str, content_type: ContentType, options: ChunkingOptions) -> list[Chunk]:
    """Chunks in document order; whitespace-only documents give no chunks."""
    sections = _markdown_sections(text) if content_type is ContentType.MARKDOWN else [_Section(0, len(text), "")]
    chunks: list[Chunk] = []
    for section in sections:
        units = _split_long(_units(text, section.start, section.end), text, options.size)
        for start, end in _pack(units, options):
            chunks.append(Chunk(text=text[start:end], start=start, end=end, heading=section.heading))
    return chunks


def _markdown_sections(text: str) -> list[_Section]:
    sections: list[_Section] = []
    path: list[tuple[int, str]] = []
    section_start = 0
    heading = ""
    in_fence: str | None = None
    offset = 0
    lines = text.splitlines(keepends=True)
    bare_lines = [line.rstrip("\r\n") for line in lines]
    for index, (line, bare) in enumerate(zip(lines, bare_lines, strict=True)):
        fence = _FENCE.match(bare)
        if fence:
            marker = fence.group(1)
            if in_fence is None:
                in_fence = marker
            elif marker == in_fence:
                in_fence = None
        elif in_fence is None and (found := _heading(bare_lines, index)):
            if offset > section_start:
                sections.append(_Section(section_start, offset, heading))
            level, title = found
            path = [(lvl, t) for lvl, t in path if lvl < level]
            path.append((level, title))
            heading = " > ".join(t for _, t in path)
            section_start = offset
        offset += len(line)
    if len(text) > section_start:
        sections.append(_Section(section_start, len(text), heading))
    return sections


def _heading(lines: list[str], index: int) -> tuple[int, str] | None:
    """(level, title) if ``lines[index]`` starts a heading: ATX (``## Title``) or setext (underlined)."""
    line = lines[index]
    if match := _HEADING.match(line):
        return len(match.group(1)), match.group(2).strip()
    # Setext: a one-line paragraph underlined with = (level 1) or - (level 2). A "---" after a
    # blank line is a thematic break instead, and list items or quotes are not titles.
    if (
        index + 1 < len(lines)
        and line.strip()
        and (index == 0 or not lines[index - 1].strip())
        and not _NOT_A_TITLE.match(line)
        and (underline := _SETEXT_UNDERLINE.match(lines[index + 1]))
    ):
        return (1 if underline.group(1).startswith("=") else 2), line.strip()
    return None


def _units(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentence-like spans in ``text[start:end]``, trimmed of surrounding whitespace."""
    units: list[tuple[int, int]] = []
    cursor = start
    for match in _UNIT_BREAK.finditer(text, start, end):
        units.extend(_trimmed(text, cursor, match.start()))
        cursor = match.end()
    units.extend(_trimmed(text, cursor, end))
    return units


def _trimmed(text: str, start: int, end: int) -> list[tuple[int, int]]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [(start, end)] if end > start else []


def _split_long(units: list[tuple[int, int]], text: str, size: int) -> list[tuple[int, int]]:
    """Break units longer than ``size`` at the last whitespace that fits (hard cut if none)."""
    out: list[tuple[int, int]] = []
    for unit_start, end in units:
        start = unit_start
        while end - start > size:
            cut = text.rfind(" ", start + 1, start + size + 1)
            if cut <= start:
                cut = start + size
            out.extend(_trimmed(text, start, cut))
            start = cut
            while start < end and text[start].isspace():
                start += 1
        out.extend(_trimmed(text, start, end))
    return out


def _pack(units: list[tuple[int, int]], options: ChunkingOptions) -> list[tuple[int, int]]:
    """Greedily pack consecutive units into spans of at most ``size`` characters.

    A new chunk repeats the trailing units of the previous one that fit in ``overlap``
    characters, so a fact split across a boundary is still whole in one of the two chunks.
    """
    spans: list[tuple[int, int]] = []
    first = 0
    while first < len(units):
        last = first
        while last + 1 < len(units) and units[last + 1][1] - units[first][0] <= options.size:
            last += 1
        spans.append((units[first][0], units[last][1]))
        if last + 1 >= len(units):
            break
        following = last + 1
        # Step back over units that fit in the overlap, but always make progress.
        back = following
        while back - 1 > first and units[last][1] - units[back - 1][0] <= options.overlap:
            back -= 1
        # The next chunk must still fit its first new unit after the overlap.
        while back < following and units[following][1] - units[back][0] > options.size:
            back += 1
        first = back
    return spans
