"""Reading what valgrind's callgrind wrote: the instruction count of one dump."""

from __future__ import annotations

from pathlib import Path


def summary_of(dump: Path) -> int:
    """The instruction count a callgrind dump file holds (its ``summary:`` line)."""
    for line in dump.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise ValueError(f"{dump} has no summary line")
