"""Supervised loops: a failure streak is logged loudly once and quietly after, an outage of a
dependency in the loop's own words, and a body that says it is healthy again starts afresh."""

from __future__ import annotations

import asyncio

from runtime.backoff import Backoff
from runtime.supervisor import Outage, SupervisedLoop
from tests.runtime.log_events import log_events


def fast_backoff() -> Backoff:
    # Delays of 5-10 ms, then 50-100 ms: which one a retry waited says whether the backoff was reset.
    return Backoff(initial=0.01, maximum=1.0, multiplier=10)


class Script:
    """A loop body that runs through ``steps``: an exception to raise, or "healthy" to report
    being healthy and go on; after the last step it waits to be cancelled."""

    def __init__(self, steps: list[Exception | str]) -> None:
        self.steps = steps
        self.done = asyncio.Event()
        self.loop: SupervisedLoop | None = None

    async def __call__(self) -> None:
        while self.steps:
            step = self.steps.pop(0)
            if isinstance(step, Exception):
                raise step
            assert self.loop is not None
            self.loop.mark_healthy()
        self.done.set()
        await asyncio.Event().wait()

    def supervise(self, **options: object) -> SupervisedLoop:
        self.loop = SupervisedLoop("script", self, backoff=fast_backoff(), **options)  # type: ignore[arg-type]
        return self.loop


async def test_a_failure_streak_is_logged_loudly_once_then_quietly_and_backs_off() -> None:
    script = Script([RuntimeError("bug 1"), RuntimeError("bug 2"), RuntimeError("bug 3")])
    with log_events() as logs:
        loop = script.supervise().start()
        await asyncio.wait_for(script.done.wait(), 10)
        await loop.stop()
    lines = logs.named("background loop crashed; restarting")
    assert [(line["log_level"], line["failures"], line["error"]) for line in lines] == [
        ("error", 1, "bug 1"),
        ("warning", 2, "bug 2"),
        ("warning", 3, "bug 3"),
    ]
    assert [bool(line["exc_info"]) for line in lines] == [True, False, False], "one traceback per streak"
    assert lines[0]["retry_in"] <= 0.01 and lines[1]["retry_in"] >= 0.05, "each retry waits longer"
    assert loop.crashes == 3


async def test_an_outage_is_reported_in_the_loops_words_without_a_traceback_and_a_bug_with_one() -> None:
    acted: list[str] = []

    async def describe(error: Exception) -> dict[str, str]:
        acted.append(str(error))  # e.g. fall back to cached settings
        return {"consul": "127.0.0.1:8500", "serving": "yes, without registration"}

    script = Script([ConnectionError("refused"), KeyError("a bug")])
    outage = Outage((ConnectionError,), "consul.registration.unreachable", describe)
    with log_events() as logs:
        loop = script.supervise(outage=outage).start()
        await asyncio.wait_for(script.done.wait(), 10)
        await loop.stop()
    [unreachable] = logs.named("consul.registration.unreachable")
    assert unreachable["serving"] == "yes, without registration" and unreachable["error"] == "refused"
    assert unreachable["log_level"] == "error" and not unreachable["exc_info"]
    assert acted == ["refused"]
    [crash] = logs.named("background loop crashed; restarting")
    assert crash["failures"] == 2 and crash["log_level"] == "warning", "still the same streak"


async def test_a_body_that_is_healthy_again_ends_the_streak_and_the_backoff() -> None:
    script = Script([OSError("down"), OSError("still down"), "healthy", OSError("down again")])
    outage = Outage((OSError,), "database listener lost; reconnecting")
    with log_events() as logs:
        loop = script.supervise(outage=outage).start()
        await asyncio.wait_for(script.done.wait(), 10)
        await loop.stop()
    lines = logs.named("database listener lost; reconnecting")
    assert [(line["log_level"], line["failures"]) for line in lines] == [("error", 1), ("warning", 2), ("error", 1)]
    assert lines[2]["retry_in"] <= 0.01, "the first retry of a new streak waits the shortest delay"
    assert logs.named("background loop recovered")[0]["failures"] == 2
    assert not loop.running
