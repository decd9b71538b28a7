"""The run state machine: every legal move, in one table.

    IDLE ──► PROCESSING ──► COMPLETED
      │          │ ├──────► FAILED
      │          │ └──────► WAITING_FOR_REVIEW ──► COMPLETED (approved) | FAILED (rejected)
      └──────────┴──────────────────┴────────────► CANCELLED

Anything not in ``TRANSITIONS`` is refused with ``IllegalTransition`` before any write, so a
refused move is never half-applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class RunState(StrEnum):
    IDLE = "IDLE"
    PROCESSING = "PROCESSING"
    WAITING_FOR_REVIEW = "WAITING_FOR_REVIEW"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    RunState.IDLE: frozenset({RunState.PROCESSING, RunState.CANCELLED}),
    RunState.PROCESSING: frozenset(
        {RunState.WAITING_FOR_REVIEW, RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED}
    ),
    RunState.WAITING_FOR_REVIEW: frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED}),
    RunState.COMPLETED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
}

TERMINAL: frozenset[RunState] = frozenset(state for state, targets in TRANSITIONS.items() if not targets)


class IllegalTransition(Exception):
    """A move the transition table does not allow; maps to FAILED_PRECONDITION."""

    def __init__(self, from_state: RunState, to_state: RunState) -> None:
        self.from_state = from_state
        self.to_state = to_state
        allowed = ", ".join(sorted(TRANSITIONS[from_state])) or "none, it is terminal"
        super().__init__(
            f"a run in state {from_state} cannot move to {to_state} (allowed from {from_state}: {allowed})"
        )


def check_transition(from_state: RunState, to_state: RunState) -> None:
    if to_state not in TRANSITIONS[from_state]:
        raise IllegalTransition(from_state, to_state)
