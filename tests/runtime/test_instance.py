"""Instance ids: unique among live processes without configuration, the same after a restart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from runtime.instance import claim_instance_id
from tests.system import REPO

_PRINT_ID_AND_WAIT = (
    "import sys; from pathlib import Path; from runtime.instance import claim_instance_id;"
    " claimed = claim_instance_id(data_dir=Path(sys.argv[1])); print(claimed.name, flush=True); sys.stdin.read()"
)


def _process(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _PRINT_ID_AND_WAIT, str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def _stop(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.communicate(timeout=10)  # reaps it and closes its pipes


def test_a_configured_id_wins() -> None:
    assert claim_instance_id("agent-v1-0").name == "agent-v1-0"


async def test_a_closed_claim_frees_its_slot_for_the_next_claim(tmp_path: Path) -> None:
    first = claim_instance_id(data_dir=tmp_path)
    second = claim_instance_id(data_dir=tmp_path)
    assert first.name != second.name  # two live instances in one process are two instances
    await first.close()
    again = claim_instance_id(data_dir=tmp_path)
    assert again.name == first.name
    await second.close()
    await again.close()


def test_live_processes_on_one_data_dir_get_distinct_ids_and_a_restart_gets_its_id_back(tmp_path: Path) -> None:
    first, first_id = _process(tmp_path)
    second, second_id = _process(tmp_path)
    try:
        assert first_id != second_id
        assert first_id.rsplit("-", 1)[0] == second_id.rsplit("-", 1)[0]  # host name, random suffix
        _stop(first)
        restarted, restarted_id = _process(tmp_path)
        _stop(restarted)
    finally:
        for process in (first, second):
            if process.returncode is None:
                _stop(process)
    assert restarted_id == first_id


def test_processes_on_separate_data_dirs_get_distinct_ids(tmp_path: Path) -> None:
    one, one_id = _process(tmp_path / "a")
    other, other_id = _process(tmp_path / "b")
    for process in (one, other):
        _stop(process)
    assert one_id != other_id
