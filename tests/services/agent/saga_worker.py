"""Runs the agent workflow in its own process, so a test can SIGKILL it mid-saga and start it again.

``python -m tests.services.agent.saga_worker DATA_DIR start HANG_IN`` creates a run and executes
it until the step HANG_IN ("retrieve" or "decide"), where it blocks forever (waiting to be
killed). ``... recover RETRIEVAL`` does what the service does at start-up: recover and execute
the unfinished runs, with retrieval "up" or "down". Every retrieval is appended to
``DATA_DIR/retrievals.log``, so the test can count tool calls across processes.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path

from services.agent.decision import Decision, DecisionRequest, ExtractiveDecisionEngine, Passage
from services.agent.retrieval import RetrievalFailed
from services.agent.workflow import RunWorkflow
from tests.services.agent.conftest import open_stores
from tests.services.agent.engines import REFUNDS


def announce(line: str) -> None:
    print(line, flush=True)


class Retriever:
    def __init__(self, data_dir: Path, *, hang: bool, down: bool) -> None:
        self._log = data_dir / "retrievals.log"
        self._hang = hang
        self._down = down

    async def __call__(self, query: str, metadata_filter: Mapping[str, str], top_k: int) -> list[Passage]:
        with self._log.open("a") as log:
            log.write(f"{query}\n")
        if self._hang:
            announce("HANGING in retrieve")
            await asyncio.Event().wait()
        if self._down:
            raise RetrievalFailed("knowledge retrieval failed: UNAVAILABLE")
        return [REFUNDS]


class Engine:
    name = "extractive"

    def __init__(self, *, hang: bool) -> None:
        self._hang = hang

    async def decide(self, request: DecisionRequest) -> Decision:
        if self._hang:
            announce("HANGING in decide")
            await asyncio.Event().wait()
        return await ExtractiveDecisionEngine(semantic=False).decide(request)

    async def close(self) -> None:
        return None


async def main(data_dir: Path, mode: str, option: str) -> None:
    stores = await open_stores(data_dir)
    hang_in = option if mode == "start" else ""
    workflow = RunWorkflow(
        store=stores.runs,
        saga_log=stores.sagas,
        budget=stores.budget,
        retriever=Retriever(data_dir, hang=hang_in == "retrieve", down=option == "down"),
        engine=Engine(hang=hang_in == "decide"),
    )
    if mode == "start":
        run, _ = await stores.runs.create(question="How long do refunds take?", creator="alice")
        announce(f"RUN {run.run_id}")
        await workflow.execute(run.run_id)
    else:
        for run_id in await workflow.recover():
            run = await workflow.execute(run_id)
            announce(f"RECOVERED {run_id} {run.state}")
        announce("DONE")
    await stores.read_db.close()
    await stores.db.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
