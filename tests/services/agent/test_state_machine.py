"""The run state machine: exactly the transitions of the table are legal, for every pair of states."""

from __future__ import annotations

import itertools

import pytest

from services.agent.state_machine import TERMINAL, TRANSITIONS, IllegalTransition, RunState, check_transition

S = RunState
LEGAL = {
    (S.IDLE, S.PROCESSING),
    (S.IDLE, S.CANCELLED),
    (S.PROCESSING, S.WAITING_FOR_REVIEW),
    (S.PROCESSING, S.COMPLETED),
    (S.PROCESSING, S.FAILED),
    (S.PROCESSING, S.CANCELLED),
    (S.WAITING_FOR_REVIEW, S.COMPLETED),
    (S.WAITING_FOR_REVIEW, S.FAILED),
    (S.WAITING_FOR_REVIEW, S.CANCELLED),
}
ALL_PAIRS = list(itertools.product(RunState, RunState))


def test_the_table_is_exactly_the_documented_machine() -> None:
    assert {(src, dst) for src, targets in TRANSITIONS.items() for dst in targets} == LEGAL
    assert set(TRANSITIONS) == set(RunState)


@pytest.mark.parametrize(("src", "dst"), sorted(LEGAL))
def test_a_legal_transition_is_allowed(src: RunState, dst: RunState) -> None:
    check_transition(src, dst)


@pytest.mark.parametrize(("src", "dst"), sorted(set(ALL_PAIRS) - LEGAL))
def test_an_illegal_transition_is_refused_naming_both_states(src: RunState, dst: RunState) -> None:
    with pytest.raises(IllegalTransition) as raised:
        check_transition(src, dst)
    assert (raised.value.from_state, raised.value.to_state) == (src, dst)
    assert str(src) in str(raised.value)
    assert str(dst) in str(raised.value)


def test_completed_failed_and_cancelled_are_terminal() -> None:
    assert {S.COMPLETED, S.FAILED, S.CANCELLED} == TERMINAL
