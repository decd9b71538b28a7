"""The committed envoy/ and istio/ files are exactly what the policy renders, and Envoy accepts them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mesh.certs import write_mesh_certs
from mesh.envoy_process import validate_config
from mesh.local_layout import mesh_identities
from mesh.policy import Policy, load_policy
from mesh.render import drift, rendered_files
from tools.dev_tokens import write_key_pair

REPO = Path(__file__).resolve().parents[2]
ENVOY_CONFIGS = sorted((REPO / "envoy").glob("*.yaml"))


def test_committed_files_match_a_fresh_rendering(policy: Policy) -> None:
    assert drift(policy, REPO) == [], "run `make mesh-render` and commit the result"


def test_every_committed_rendered_file_comes_from_the_policy(policy: Policy) -> None:
    committed = {p.relative_to(REPO) for folder in ("envoy", "istio") for p in (REPO / folder).glob("*.yaml")}
    assert committed == set(rendered_files(policy)), "a stray or hand-written file sits among rendered ones"


@pytest.fixture(scope="module")
def local_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the repository root for the committed configs' relative paths."""
    root = tmp_path_factory.mktemp("local-root")
    policy = load_policy()
    write_mesh_certs(root / policy.local.certs_dir, mesh_identities(policy))
    # The edge reads the issuer's public keys at start.
    write_key_pair((root / policy.local.jwks_file).parent, alg="ES256")
    descriptor_set = REPO / "gen" / "agentmesh.pb"
    if not descriptor_set.exists():
        pytest.fail("gen/agentmesh.pb is missing: run `make gen`")
    (root / "gen").mkdir()
    shutil.copy(descriptor_set, root / "gen" / "agentmesh.pb")
    return root


@pytest.mark.envoy
@pytest.mark.parametrize("config", ENVOY_CONFIGS, ids=[p.stem for p in ENVOY_CONFIGS])
async def test_envoy_validates_each_rendered_config(config: Path, local_root: Path) -> None:
    ok, output = await validate_config(config, cwd=local_root)
    assert ok, output


@pytest.mark.envoy
async def test_envoy_validation_rejects_a_misspelt_field(tmp_path: Path, local_root: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (REPO / "envoy" / "agent-v1.yaml").read_text().replace("max_ejection_percent", "max_ejection_pct")
    )

    ok, output = await validate_config(broken, cwd=local_root)

    assert not ok
    assert "max_ejection_pct" in output
