"""A service configured with TLS serves only TLS; with a client CA, only mutual TLS."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.bootstrap import ManagedServer
from runtime.config import TlsSettings
from services.rag.config import RagSettings
from services.rag.server import build


async def check(channel: grpc.aio.Channel) -> str:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


async def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost")
    server_cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    client_cert = ca.issue_cert("gateway.agentmesh.local")
    settings = RagSettings(
        port=0,
        data_dir=tmp_path,
        drain_delay_s=0,
        tls=TlsSettings(
            cert_file=tmp_path / "server.crt", key_file=tmp_path / "server.key", client_ca_file=tmp_path / "ca.crt"
        ),
    )
    server = ManagedServer(await build(settings))
    await server.start()
    target = f"localhost:{server.port}"
    try:
        mutual = grpc.ssl_channel_credentials(
            root_certificates=ca.cert_pem.bytes(),
            private_key=client_cert.private_key_pem.bytes(),
            certificate_chain=client_cert.cert_chain_pems[0].bytes(),
        )
        async with grpc.aio.secure_channel(target, mutual) as channel:
            assert await check(channel) == "SERVING"

        server_only = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        async with grpc.aio.secure_channel(target, server_only) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await check(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as plaintext:
                await check(channel)
            assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop()
