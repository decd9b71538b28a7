"""The agent decision step: a pluggable ``DecisionEngine`` that answers a question from passages.

Engines are chosen by configuration (``load_decision_engine``): a registered name
("extractive", "http") or any ``package.module:factory`` import path, called with the
configured options. So an LLM behind an HTTP API, or an in-house engine, plugs in with no
change to this code. The built-in extractive engine needs no network and no model: it quotes
the retrieved sentences that answer the question, each with its citation.
"""

from services.agent.decision.engine import Decision, DecisionEngine, DecisionRequest, Passage, Preloads, Prepares
from services.agent.decision.extractive import NO_KNOWLEDGE, ExtractiveDecisionEngine
from services.agent.decision.http import HttpDecisionEngine
from services.agent.decision.loader import ENGINES, load_decision_engine

__all__ = [
    "ENGINES",
    "NO_KNOWLEDGE",
    "Decision",
    "DecisionEngine",
    "DecisionRequest",
    "ExtractiveDecisionEngine",
    "HttpDecisionEngine",
    "Passage",
    "Preloads",
    "Prepares",
    "load_decision_engine",
]
