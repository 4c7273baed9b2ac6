"""The sidecar's gRPC listener over TLS and mTLS (envoy/credentials.py), with certificates made
at test time: a client with a certificate from the client CA is served; one without a
certificate, with one from another CA, or in plaintext is refused; replaced certificate files
are used from the next connection on, without a restart."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from critique_sidecar.devtools.stack import free_port
from critique_sidecar.envoy.credentials import add_grpc_port

NAME = "sidecar.internal"


@dataclass
class Pki:
    server_ca: trustme.CA
    client_ca: trustme.CA
    client: trustme.LeafCert
    dir: Path

    def write_server(self, ca: trustme.CA) -> None:
        leaf = ca.issue_cert(NAME)
        leaf.cert_chain_pems[0].write_to_path(str(self.dir / "server.crt"))
        leaf.private_key_pem.write_to_path(str(self.dir / "server.key"))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    p = Pki(trustme.CA(), trustme.CA(), trustme.CA().issue_cert("unused"), tmp_path)
    p.client = p.client_ca.issue_cert("envoy")
    p.write_server(p.server_ca)
    p.client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.crt"))
    return p


@pytest.fixture
async def address(pki: Pki) -> AsyncIterator[str]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    addr = f"127.0.0.1:{free_port()}"
    add_grpc_port(server, addr, pki.dir / "server.crt", pki.dir / "server.key", pki.dir / "client-ca.crt")
    await server.start()
    yield addr
    await server.stop(None)


async def check(address: str, credentials: grpc.ChannelCredentials | None) -> int:
    options = [("grpc.ssl_target_name_override", NAME)]
    channel = (
        grpc.aio.secure_channel(address, credentials, options=options)
        if credentials
        else grpc.aio.insecure_channel(address)
    )
    async with channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        return int(reply.status)


def creds(ca: trustme.CA, leaf: trustme.LeafCert | None) -> grpc.ChannelCredentials:
    if leaf is None:
        return grpc.ssl_channel_credentials(ca.cert_pem.bytes())
    return grpc.ssl_channel_credentials(
        ca.cert_pem.bytes(), leaf.private_key_pem.bytes(), b"".join(p.bytes() for p in leaf.cert_chain_pems)
    )


async def test_a_client_with_a_certificate_from_the_client_ca_is_served(pki: Pki, address: str) -> None:
    assert await check(address, creds(pki.server_ca, pki.client)) == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("client", ["no certificate", "another CA", "plaintext"])
async def test_a_client_without_a_valid_certificate_is_refused(pki: Pki, address: str, client: str) -> None:
    credentials = {
        "no certificate": creds(pki.server_ca, None),
        "another CA": creds(pki.server_ca, trustme.CA().issue_cert("envoy")),
        "plaintext": None,
    }[client]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await check(address, credentials)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_replaced_certificate_files_serve_the_next_connection(pki: Pki, address: str) -> None:
    assert await check(address, creds(pki.server_ca, pki.client)) == health_pb2.HealthCheckResponse.SERVING
    rotated = trustme.CA()
    pki.write_server(rotated)  # e.g. cert-manager renewing the Secret
    assert await check(address, creds(rotated, pki.client)) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError):
        await check(address, creds(pki.server_ca, pki.client))  # the old certificate is gone


@pytest.mark.parametrize("broken", ["server.crt", "server.key", "client-ca.crt"])
async def test_a_half_written_file_keeps_the_current_certificate_and_warns(
    pki: Pki, address: str, broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewal caught mid-write: the listener keeps serving with what it had, and says so."""
    path = pki.dir / broken
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING, logger="critique_sidecar.envoy.credentials"):
        assert await check(address, creds(pki.server_ca, pki.client)) == health_pb2.HealthCheckResponse.SERVING
    assert any("TLS files unreadable, keeping the current certificate" in r.getMessage() for r in caplog.records)
