"""Request validation for the agent service: every violation names its field (AIP-193 BadRequest)."""

from __future__ import annotations

import re

from agentmesh.agent.v1 import agent_service_pb2, run_pb2
from rpcstatus.errors import invalid_argument

MAX_QUESTION_CHARS = 4000
MAX_LABELS = 16
MAX_LABEL_CHARS = 63
MAX_COMMENT_CHARS = 2000
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RUN_ID = re.compile(r"^run_[0-9a-f]{32}$")
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50


def _raise_if(violations: list[tuple[str, str]]) -> None:
    if violations:
        raise invalid_argument(violations)


def validate_create(request: agent_service_pb2.CreateRunRequest) -> None:
    v: list[tuple[str, str]] = []
    if request.request_id and not REQUEST_ID.match(request.request_id):
        v.append(("request_id", "must be 1-64 characters of letters, digits, - and _ (a UUID is ideal)"))
    if not request.question.strip():
        v.append(("question", "is required and must not be blank"))
    elif len(request.question) > MAX_QUESTION_CHARS:
        v.append(("question", f"is {len(request.question)} characters; the limit is {MAX_QUESTION_CHARS}"))
    if len(request.labels) > MAX_LABELS:
        v.append(("labels", f"at most {MAX_LABELS} labels"))
    for key, value in request.labels.items():
        if not key or len(key) > MAX_LABEL_CHARS or len(value) > MAX_LABEL_CHARS:
            v.append(
                (
                    f"labels[{key!r}]",
                    f"keys must be non-empty; keys and values at most {MAX_LABEL_CHARS} chars",
                )
            )
    for key in request.retrieval_filter:
        if not key:
            v.append(("retrieval_filter", "keys must be non-empty"))
    _raise_if(v)


def validate_run_id(run_id: str, field: str = "run_id") -> None:
    if not run_id:
        raise invalid_argument([(field, "is required")])
    if not RUN_ID.match(run_id):
        raise invalid_argument([(field, "is not a run ID (expected run_ followed by 32 hex digits)")])


def validate_list(request: agent_service_pb2.ListRunsRequest) -> int:
    """Returns the effective page size."""
    if request.page_size < 0:
        raise invalid_argument([("page_size", "must not be negative")])
    if request.state not in run_pb2.Run.State.values():
        raise invalid_argument([("state", f"unknown state {request.state}")])
    return min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def validate_review(request: agent_service_pb2.SubmitReviewRequest) -> None:
    validate_run_id(request.run_id)
    v: list[tuple[str, str]] = []
    if request.decision not in (
        agent_service_pb2.SubmitReviewRequest.DECISION_APPROVE,
        agent_service_pb2.SubmitReviewRequest.DECISION_REJECT,
    ):
        v.append(("decision", "must be DECISION_APPROVE or DECISION_REJECT"))
    if len(request.comment) > MAX_COMMENT_CHARS:
        v.append(("comment", f"at most {MAX_COMMENT_CHARS} characters"))
    _raise_if(v)
