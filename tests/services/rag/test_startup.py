"""A RAG server without dense retrieval never imports torch: it starts fast and small."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_a_bm25_only_server_does_not_load_torch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'gen'}"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "none", result.stdout + result.stderr
