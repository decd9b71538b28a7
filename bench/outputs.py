"""What the stand-alone bench commands share: a figure against its target, the table of them, and
the run stamped with when and where it was made, written out as JSON, markdown and a docs block."""

from __future__ import annotations

import asyncio
import datetime
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import machine
from tools.doc_block import replace_block


@dataclass(frozen=True)
class Bound:
    """``value`` (None: not measured in this run) against ``bound``: at least it, or at most it."""

    text: str
    value: float | None
    bound: float
    at_least: bool

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.bound if self.at_least else self.value <= self.bound


def table(bounds: Sequence[Bound], heading: str = "target (ratios within this run)") -> list[str]:
    lines = [f"| {heading} | measured | |", "|---|---:|---|"]
    for bound in bounds:
        value = "n/a" if bound.value is None else f"{bound.value:,g}"
        verdict = {True: "met", False: "**missed**", None: "not measured"}[bound.met]
        lines.append(f"| {bound.text} | {value} | {verdict} |")
    return lines


def measure(work_prefix: str, run: Callable[[Path], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """``run(work_dir)`` in a fresh temporary directory, its results stamped with when and where."""
    started_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    about = machine.describe()
    work = Path(tempfile.mkdtemp(prefix=work_prefix))
    began = time.monotonic()
    try:
        results = asyncio.run(run(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.update(started_at=started_at, machine=about, wall_s=round(time.monotonic() - began, 1))
    return results


def publish(
    results: dict[str, Any], text: str, *, name: str, out: Path, doc: Path | None, block: tuple[str, str]
) -> None:
    """``out``/``name``.json and .md, the docs page's ``block`` (its begin and end markers), and stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(text)
    if doc is not None:
        replace_block(doc, *block, text)
    print(text)
