"""``python -m mesh render|check|certs``: the mesh's command line (behind make mesh-render / certs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mesh.certs import write_mesh_certs
from mesh.contracts import contract_problems, load_methods, missing_error_detail_files
from mesh.local_layout import DESCRIPTOR_SET, mesh_identities
from mesh.policy import DEFAULT_POLICY_PATH, load_policy
from mesh.render import drift, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh", description=__doc__)
    parser.add_argument("--policy", type=Path, default=DEFAULT_POLICY_PATH)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("render", help="write envoy/ and istio/ from the policy")
    commands.add_parser("check", help="fail if envoy/ or istio/ differ from the policy, or it contradicts the protos")
    certs = commands.add_parser("certs", help="a fresh dev CA and one certificate per identity")
    certs.add_argument("--dir", type=Path, default=None, help="default: the policy's local.certs_dir")
    certs.add_argument("--if-missing", action="store_true", help="keep an existing CA")
    args = parser.parse_args(argv)

    policy = load_policy(args.policy)
    root = Path.cwd()
    if args.command == "render":
        for path in write(policy, root):
            print(f"rendered {path}")
        return 0
    if args.command == "check":
        problems = [f"{path} is stale: run `make mesh-render`" for path in drift(policy, root)]
        if DESCRIPTOR_SET.exists():
            problems += contract_problems(policy, load_methods(DESCRIPTOR_SET))
            problems += [
                f"{DESCRIPTOR_SET} lacks {name}: HTTP errors from the edge would have no JSON body"
                for name in missing_error_detail_files(DESCRIPTOR_SET)
            ]
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    directory = args.dir or Path(policy.local.certs_dir)
    if args.if_missing and (directory / "ca.pem").exists():
        return 0
    for name, paths in write_mesh_certs(directory, mesh_identities(policy)).items():
        print(f"{name}: {paths.cert}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
