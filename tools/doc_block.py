"""Replace the generated block between two marker comments in a docs page.

`make bench` and `make eval` keep their tables in docs/ current this way: the prose around a
block is written by hand, the block itself only by the tool named in its begin marker.
"""

from __future__ import annotations

from pathlib import Path


def replace_block(page: Path, begin: str, end: str, text: str) -> bool:
    """Put ``text`` between ``begin`` and ``end`` in ``page``; False when the page or a marker is missing."""
    if not page.exists():
        return False
    current = page.read_text(encoding="utf-8")
    if begin not in current or end not in current:
        return False
    head, rest = current.split(begin, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{begin}\n{text}{end}{tail}", encoding="utf-8")
    return True
