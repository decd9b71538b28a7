"""The development CA: one root and one SPIFFE certificate per mesh identity.

Nothing here is committed: ``python -m mesh certs`` (``make certs``) writes a fresh CA and
leaf certificates into the gitignored ``certs/`` directory. Each leaf carries its SPIFFE ID
as a URI SAN (what sidecars authorise on) plus ``localhost``/``127.0.0.1`` so the same
certificate also works where a client checks the hostname, as the edge's clients do.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where one identity's PEM files live."""

    ca: Path
    cert: Path
    key: Path


class DevCA:
    """An in-memory CA that issues short-lived leaf certificates."""

    def __init__(self, *, name: str = "agentmesh dev CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def ca_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, spiffe_id: str, *, dns_names: Iterable[str] = ("localhost",)) -> tuple[bytes, bytes]:
        """A (certificate PEM, private key PEM) pair for ``spiffe_id``, usable as client and server."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        names += [x509.DNSName(name) for name in dns_names]
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        certificate = (
            x509.CertificateBuilder()
            # SPIFFE puts identity in the SAN only; the CN is a readable label.
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id.rsplit("/", 1)[-1])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return certificate.public_bytes(serialization.Encoding.PEM), key_pem

    def write_identity(self, directory: Path, name: str, spiffe_id: str) -> CertPaths:
        """Issue a certificate for ``spiffe_id`` and write ``<name>.pem`` / ``<name>-key.pem``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem = self.issue(spiffe_id)
        paths = cert_paths(directory, name)
        paths.ca.write_bytes(self.ca_pem)
        paths.cert.write_bytes(cert_pem)
        # Private keys are readable by their owner only, like a mounted Kubernetes secret.
        fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        return paths


def cert_paths(directory: Path, name: str) -> CertPaths:
    """Where ``write_identity`` puts ``name``'s files (without creating them)."""
    return CertPaths(ca=directory / "ca.pem", cert=directory / f"{name}.pem", key=directory / f"{name}-key.pem")


def write_mesh_certs(directory: Path, identities: dict[str, str]) -> dict[str, CertPaths]:
    """A fresh CA plus one certificate per ``name -> SPIFFE ID``; the CA key never touches disk."""
    ca = DevCA()
    return {name: ca.write_identity(directory, name, spiffe_id) for name, spiffe_id in identities.items()}
