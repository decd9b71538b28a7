"""`python -m bench.rag_growth` grows a corpus on two real rag replicas and prints its table
(tiny sizes; speed is never checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.rag_growth import Corpus
from tests.bench.modules import run_bench, tiny_postgres_run


def test_documents_are_about_110_words_and_a_probe_word_is_in_no_other_document() -> None:
    corpus = Corpus()
    documents = corpus.batch() + corpus.batch()
    probe, marker = corpus.probe(7)

    assert [d.document_id for d in documents] == [f"corpus/{n}" for n in range(200)]
    assert all(100 <= len(d.text.split()) <= 120 for d in documents)
    assert marker in probe.text.split()
    assert not any(marker in d.text.lower() for d in documents)
    assert corpus.count == 201
    assert Corpus().batch()[0].text == Corpus().batch()[0].text  # the same corpus every run


@tiny_postgres_run
def test_a_tiny_run_measures_every_size(tmp_path: Path) -> None:
    done = run_bench(
        "bench.rag_growth",
        *("--sizes", "150,300", "--probes", "3", "--searches", "10", "--out", str(tmp_path), "--no-doc"),
        timeout=170,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "| documents | batch of 100 s | found on the other replica p50 / p95 ms |" in done.stdout
    results = json.loads((tmp_path / "rag_growth.json").read_text())
    checkpoints = results["checkpoints"]
    # The probes' documents count toward the next size.
    assert [c["documents"] for c in checkpoints] == [150, 300]
    for checkpoint in checkpoints:
        assert checkpoint["found_late"] == 0
        assert checkpoint["batch_s"] > 0
        assert len(checkpoint["rss_mb"]) == 2
        assert checkpoint["startup_s"] > 0
        assert not checkpoint["stopped_early"]
    assert (tmp_path / "rag_growth.md").read_text().startswith("Measured ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--sizes", "10000,1000"), "--sizes '10000,1000': expected increasing counts of at least 1"),
        (("--sizes", "ten"), "--sizes 'ten': expected comma-separated document counts"),
        (("--budget", "0"), "--budget 0.0: expected seconds above 0"),
    ],
)
def test_a_bad_argument_is_refused_in_one_line(args: tuple[str, ...], message: str) -> None:
    done = run_bench("bench.rag_growth", *args, timeout=30)

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert message in done.stderr
