"""A measured figure against its target, and the table of them that each bench report ends with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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
