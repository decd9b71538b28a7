"""The machine a run was made on, for the report: results mean little without it."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench import envoy


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    output = (completed.stdout or completed.stderr).strip().splitlines()
    return output[0].strip() if output else None


def _envoy_version() -> str | None:
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL" -> "envoy 1.40.0"
    line = _version([envoy.binary() or "envoy", "--version"])
    found = re.search(r"/(\d+\.\d+\.\d+)/", line or "")
    return f"envoy {found.group(1)}" if found else line


def describe() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": metadata.version("grpcio"),
        "h2load": _version(["h2load", "--version"]),
        "envoy": _envoy_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
