"""Where a server process spends its time under load: py-spy samples, summarized per function.

`python -m bench SCENARIO --profile ROLE` samples that process (e.g. `gateway`, `backend`) during
the measured h2load run of the first pass and writes `results/profiles/SCENARIO-ROLE.txt`: the
functions with the most samples on top of the stack (self) and anywhere in it (inclusive). Sampling
is non-blocking, so the process is not paused; time inside grpc's compiled core shows up as the
Python frame that called into it.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

_COUNT = re.compile(r" (\d+)$")
_LINE = re.compile(r":\d+\)")


def _binary() -> str | None:
    # Installed into the venv by pip, which need not be on PATH.
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def available() -> bool:
    return _binary() is not None


def start(pid: int, duration_s: float, raw: Path) -> subprocess.Popen[bytes]:
    argv = [_binary() or "py-spy", "record", "--pid", str(pid), "--duration", str(max(1, round(duration_s)))]
    argv += ["--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize(raw: Path, *, top: int = 25) -> str:
    """Self and inclusive sample shares per function (line numbers folded together)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        count = _COUNT.search(line)
        if count is None:  # a frame name with a newline in it continues the previous line
            continue
        samples = int(count.group(1))
        frames = [_LINE.sub(")", frame) for frame in line[: count.start()].split(";")]
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "self (on top of the stack):"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive (anywhere in the stack):"]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def finish(process: subprocess.Popen[bytes], raw: Path, summary: Path) -> None:
    _, stderr = process.communicate(timeout=60)
    if process.returncode != 0 or not raw.exists():
        summary.write_text(f"py-spy failed ({process.returncode}): {stderr.decode(errors='replace')}\n")
        return
    summary.write_text(summarize(raw))
