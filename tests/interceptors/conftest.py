from __future__ import annotations

import pytest

from tests.interceptors.probe import Probe


@pytest.fixture
def probe() -> Probe:
    return Probe()
