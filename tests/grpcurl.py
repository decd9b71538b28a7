"""Run the real grpcurl binary against a server, as a user would."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


async def run_grpcurl(*args: str, cacert: Path | None = None) -> tuple[int, str, str]:
    """grpcurl's exit code, stdout and stderr; plaintext unless ``cacert`` (TLS trusting that CA)."""
    transport = ["-cacert", str(cacert)] if cacert is not None else ["-plaintext"]
    process = await asyncio.create_subprocess_exec(
        GRPCURL, *transport, "-max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def grpcurl(*args: str, cacert: Path | None = None) -> str:
    """grpcurl's output, asserting it succeeded."""
    code, out, err = await run_grpcurl(*args, cacert=cacert)
    assert code == 0, f"grpcurl {' '.join(args)} failed: {err}"
    return out
