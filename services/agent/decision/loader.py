"""Builds the engine the configuration names: a registered name or any ``package.module:factory``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from services.agent.decision.engine import DecisionEngine
from services.agent.decision.extractive import ExtractiveDecisionEngine
from services.agent.decision.http import HttpDecisionEngine

ENGINES: Mapping[str, Callable[..., DecisionEngine]] = {
    "extractive": ExtractiveDecisionEngine,
    "http": HttpDecisionEngine,
}


def load_decision_engine(spec: str, options: Mapping[str, Any] | None = None) -> DecisionEngine:
    """Build the engine named by ``spec``: a key of ``ENGINES`` or ``package.module:factory``."""
    options = dict(options or {})
    if spec in ENGINES:
        factory = ENGINES[spec]
    elif ":" in spec:
        module_name, _, attribute = spec.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    else:
        raise ValueError(
            f"unknown decision engine {spec!r}: use one of {sorted(ENGINES)} or an import path 'package.module:factory'"
        )
    engine = factory(**options)
    if not isinstance(engine, DecisionEngine):
        raise TypeError(f"{spec!r} built {type(engine).__name__}, which is not a DecisionEngine")
    return engine
