"""`make bench` and `make eval` rewrite only the generated block of their docs page."""

from __future__ import annotations

from pathlib import Path

from bench.report import BEGIN as BENCH_BEGIN
from bench.report import END as BENCH_END
from eval.rag.__main__ import DOC, DOC_BEGIN, DOC_END
from tools.doc_block import replace_block

BEGIN, END = "<!-- x:begin -->", "<!-- x:end -->"


def test_only_the_block_between_the_markers_is_replaced(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\nprose before\n\n{BEGIN}\nold table\n{END}\n\nprose after\n")
    assert replace_block(page, BEGIN, END, "new table\n")
    assert page.read_text() == f"# Title\n\nprose before\n\n{BEGIN}\nnew table\n{END}\n\nprose after\n"


def test_a_page_without_markers_is_left_alone(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nhand-written only\n")
    assert not replace_block(page, BEGIN, END, "new table\n")
    assert page.read_text() == "# Title\n\nhand-written only\n"
    assert not replace_block(tmp_path / "missing.md", BEGIN, END, "x")


def test_the_committed_docs_pages_carry_the_markers_their_tools_write() -> None:
    docs = Path(__file__).parents[2] / "docs"
    bench_page = (docs / "benchmarks.md").read_text()
    assert BENCH_BEGIN in bench_page and BENCH_END in bench_page
    rag_page = DOC.read_text()
    assert DOC_BEGIN in rag_page and DOC_END in rag_page
