"""The long-lived heap is left out of the collector's passes; what is made later is collected as before."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from runtime.heap import freeze_long_lived


class Node:
    """A reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.itself = self


@pytest.fixture
def thawed() -> Iterator[None]:
    # The test process's own heap goes back to the collector afterwards.
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("thawed")
def test_objects_alive_when_frozen_are_never_walked_and_later_garbage_is_still_collected() -> None:
    long_lived = Node()
    freeze_long_lived("a test")
    assert not any(obj is long_lived for obj in gc.get_objects())

    later = weakref.ref(Node())
    gc.collect()
    assert later() is None


@pytest.mark.usefixtures("thawed")
def test_garbage_made_before_freezing_is_collected_rather_than_kept_for_good() -> None:
    garbage = weakref.ref(Node())
    freeze_long_lived("a test")
    assert garbage() is None
