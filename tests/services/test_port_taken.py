"""A service or the console started on a port already taken says so in one line, never a traceback.

The line names the port, the setting that moves it and the process holding it, and says when that
process is one of ours left over from an earlier run (the case a SIGKILLed `make run` used to leave).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launchers import clean_env, holding, our_leftover
from tests.ports import free_port

MODULES = {"console": "console"}  # the rest are services.<name>


# grpc core's own log line for a failed bind ("E1207 01:33:42.888469 18578 add_port.cc:83] ..."),
# printed by grpc before the server can say anything.
GRPC_CORE_LOG = re.compile(r"[EWI]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def _not_a_log_line(line: str) -> bool:
    if GRPC_CORE_LOG.match(line):
        return False
    try:
        return not isinstance(json.loads(line), dict)
    except ValueError:
        return True


@pytest.mark.parametrize(
    ("name", "setting"),
    [
        ("rag", "AGENTMESH_RAG_PORT"),
        ("agent", "AGENTMESH_AGENT_PORT"),
        ("gateway", "AGENTMESH_GATEWAY_PORT"),
        ("console", "AGENTMESH_CONSOLE_PORT"),
        ("console", "AGENTMESH_CONSOLE_OTLP_PORT"),
    ],
)
def test_a_port_held_by_our_leftover_is_one_line_naming_it(tmp_path: Path, name: str, setting: str) -> None:
    port = str(free_port())
    env = {
        **clean_env(),
        f"AGENTMESH_{name.upper()}_DATA_DIR": str(tmp_path),
        "AGENTMESH_CONSOLE_PORT": "0",
        "AGENTMESH_CONSOLE_OTLP_PORT": "0",
        setting: port,
    }
    with holding(port, our_leftover(port), env) as pid:
        result = subprocess.run(
            [sys.executable, "-m", MODULES.get(name, f"services.{name}")],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if _not_a_log_line(line)]
    assert f"port {port} is already taken ({setting} moves it): pid {pid} holds it" in line
    assert "left running by an earlier agentmesh run" in line
