"""Write every rendered file (``envoy/*.yaml``, ``istio/*``) from the policy, or report drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mesh.istio_manifests import kustomization, manifest_files
from mesh.local_layout import local_edge, local_sidecars
from mesh.policy import Policy

HEADER = "# Rendered from mesh/policy.yaml by `python -m mesh render` (make mesh-render). Do not edit.\n"


class _PlainDumper(yaml.SafeDumper):
    """No YAML anchors: a rendered file should read like a hand-written one."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(documents: list[Any]) -> str:
    return HEADER + "---\n".join(yaml.dump(d, Dumper=_PlainDumper, sort_keys=False, width=120) for d in documents)


def rendered_files(policy: Policy) -> dict[Path, str]:
    """Repository-relative path -> file content, for everything the policy renders."""
    files: dict[Path, str] = {Path("envoy/edge.yaml"): _dump([local_edge(policy)])}
    for name, config in local_sidecars(policy).items():
        files[Path(f"envoy/{name}.yaml")] = _dump([config])
    istio = manifest_files(policy)
    for name, objects in istio.items():
        files[Path("istio") / name] = _dump(objects)
    files[Path("istio/kustomization.yaml")] = _dump([kustomization(policy, list(istio))])
    return files


def write(policy: Policy, root: Path) -> list[Path]:
    """Write the rendered files under ``root``; returns those whose content changed."""
    changed: list[Path] = []
    for relative, content in rendered_files(policy).items():
        path = root / relative
        if not path.exists() or path.read_text(encoding="utf-8") != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            changed.append(relative)
    return changed


def drift(policy: Policy, root: Path) -> list[Path]:
    """Rendered files whose committed copy under ``root`` differs from a fresh rendering."""
    return [
        relative
        for relative, content in rendered_files(policy).items()
        if not (root / relative).exists() or (root / relative).read_text(encoding="utf-8") != content
    ]
