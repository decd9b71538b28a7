"""The deterministic parts of the hybrid workflow: input validation, rule-based fallback answers, review.

They run before and after the agent decision and never depend on it being available, so a
run always ends in a defined state even when the decision engine is down.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.agent.decision import Decision

_DEFAULT_BLOCKED = (
    # Prompt-injection markers: refused before they reach an LLM-backed engine.
    r"\bignore (all |any )?(previous|prior|above) instructions\b",
    r"\bdisregard (the |your )?system prompt\b",
)


class ValidationFailed(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    min_chars: int = 1
    max_chars: int = 4000
    blocked_patterns: Sequence[str] = _DEFAULT_BLOCKED

    def check(self, question: str) -> str:
        """Return the normalized question, or raise ``ValidationFailed`` saying why not."""
        normalized = " ".join(question.split())
        if not self.min_chars <= len(normalized) <= self.max_chars:
            raise ValidationFailed(
                f"question must be {self.min_chars} to {self.max_chars} characters, got {len(normalized)}"
            )
        for pattern in self.blocked_patterns:
            if re.search(pattern, normalized, re.IGNORECASE):
                raise ValidationFailed(f"question matches a blocked pattern ({pattern})")
        return normalized


@dataclass(frozen=True, slots=True)
class FallbackRule:
    """When the decision step fails, questions matching ``pattern`` get ``answer``."""

    pattern: str
    answer: str


@dataclass(frozen=True, slots=True)
class FallbackRules:
    rules: Sequence[FallbackRule] = ()

    def answer(self, question: str) -> str | None:
        for rule in self.rules:
            if re.search(rule.pattern, question, re.IGNORECASE):
                return rule.answer
        return None


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """When an answer must be looked at by a person before it is released."""

    min_confidence: float = 0.25
    require_citations: bool = True
    # An engine that says "nothing found" is not guessing; park those only if asked to.
    review_abstentions: bool = False
    sensitive_terms: Sequence[str] = field(default=("password", "credential", "salary", "medical"))

    def reason_to_review(self, question: str, decision: Decision) -> str | None:
        """None to release the answer, else why it waits for review."""
        if decision.decided_by.startswith("fallback:escalated"):
            return "the decision step failed and no rule answered; escalated to human review"
        if decision.decided_by.startswith("fallback:"):
            return None  # rule answers are written and approved ahead of time
        if decision.abstained:
            return "the knowledge base has nothing on this question" if self.review_abstentions else None
        if not decision.answer:
            return "no answer was found in the knowledge base"
        if self.require_citations and not decision.citations:
            return "the answer cites no source"
        if decision.confidence < self.min_confidence:
            return f"confidence {decision.confidence:.2f} is below {self.min_confidence:.2f}"
        text = f"{question} {decision.answer}".lower()
        for term in self.sensitive_terms:
            # Whole words, plurals included ("password" matches "passwords", not "passwordless").
            if re.search(rf"\b{re.escape(term.lower())}(?:s|es)?\b", text):
                return f"mentions a sensitive topic ({term})"
        return None
