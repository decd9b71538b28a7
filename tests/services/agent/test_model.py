"""A run's dict form: what its snapshot, its events and the read model store (as JSON)."""

from __future__ import annotations

import dataclasses
import json

from services.agent.model import Citation, Run
from services.agent.state_machine import RunState

RUN = Run(
    run_id="run_1",
    question="How long do refunds take?",
    state=RunState.COMPLETED,
    version=4,
    create_time=1.5,
    update_time=2.25,
    creator="alice",
    request_id="r-1",
    answer="Refunds take 5 days.",
    citations=(Citation("refunds", "refunds#0", 0, 21, "Refunds take 5 days.", 0.9),),
    status_reason="",
    decided_by="extractive",
    labels={"team": "billing"},
    retrieval_filter={"lang": "en"},
)


def test_the_dict_form_holds_every_field_in_order_and_reads_back_as_the_same_run() -> None:
    raw = RUN.to_dict()
    assert list(raw) == [f.name for f in dataclasses.fields(Run)]
    assert list(raw["citations"][0]) == [f.name for f in dataclasses.fields(Citation)]
    assert Run.from_dict(json.loads(json.dumps(raw))) == RUN


def test_the_dict_form_is_plain_data_equal_to_dataclasses_asdict() -> None:
    # Stored snapshots written before by asdict read the same, and their JSON text is unchanged.
    expected = dataclasses.asdict(RUN) | {
        "state": str(RunState.COMPLETED),
        "citations": [dataclasses.asdict(RUN.citations[0])],
    }
    assert json.dumps(RUN.to_dict()) == json.dumps(expected)
    assert type(RUN.to_dict()["labels"]) is dict
