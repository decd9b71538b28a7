"""The dev CA: one SPIFFE identity per certificate, private keys private, none committed."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from mesh.__main__ import main as mesh_cli
from mesh.policy import Policy

REPO = Path(__file__).resolve().parents[2]


def test_make_certs_issues_one_spiffe_certificate_per_identity(policy: Policy, tmp_path: Path) -> None:
    assert mesh_cli(["certs", "--dir", str(tmp_path)]) == 0

    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for name in [*policy.services, "edge"]:
        cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.pem").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [policy.spiffe_id(name)]
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
        cert.verify_directly_issued_by(ca)
        key = tmp_path / f"{name}-key.pem"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert policy.spiffe_id("agent") == "spiffe://agentmesh.local/ns/default/sa/agent"
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)


def test_if_missing_keeps_an_existing_ca(tmp_path: Path) -> None:
    mesh_cli(["certs", "--dir", str(tmp_path)])
    before = (tmp_path / "ca.pem").read_bytes()

    assert mesh_cli(["certs", "--dir", str(tmp_path), "--if-missing"]) == 0

    assert (tmp_path / "ca.pem").read_bytes() == before


def test_no_private_key_is_committed() -> None:
    tracked = subprocess.run(
        ["git", "grep", "-l", "PRIVATE KEY-----", "--", ".", ":!tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tracked.stdout == ""
