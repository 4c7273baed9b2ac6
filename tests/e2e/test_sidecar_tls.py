"""Envoy -> sidecar gRPC over mTLS, end to end: the sidecar serves with a certificate, key and
client CA from files (CRITIQUE_GRPC_TLS_*), Envoy's sidecar_grpc cluster comes from
`envoy-config --sidecar-tls-*`, certificates made at test time; Envoy's health checks and the
metered chat both cross it. (Refusals and reload: tests/integration/test_grpc_tls.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
import trustme
import yaml

from critique_sidecar.devtools.stack import Stack

from .helpers import balance, client, funded_key

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    d = tmp_path_factory.mktemp("tls")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("sidecar.internal")
    server.cert_chain_pems[0].write_to_path(str(d / "sidecar.crt"))
    server.private_key_pem.write_to_path(str(d / "sidecar.key"))
    envoy_cert = client_ca.issue_cert("envoy")
    envoy_cert.cert_chain_pems[0].write_to_path(str(d / "envoy.crt"))
    envoy_cert.private_key_pem.write_to_path(str(d / "envoy.key"))
    server_ca.cert_pem.write_to_path(str(d / "sidecar-ca.crt"))
    client_ca.cert_pem.write_to_path(str(d / "client-ca.crt"))
    generated = subprocess.run(
        [
            sys.executable,
            "-m",
            "critique_sidecar.cli",
            "envoy-config",
            "--sidecar-tls-ca",
            str(d / "sidecar-ca.crt"),
            "--sidecar-tls-cert",
            str(d / "envoy.crt"),
            "--sidecar-tls-key",
            str(d / "envoy.key"),
            "--sidecar-tls-sni",
            "sidecar.internal",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (d / "envoy.yaml").write_text(generated)
    stack = Stack(
        d / "stack",
        envoy_config=d / "envoy.yaml",
        sidecar_env={
            "CRITIQUE_GRPC_TLS_CERT": str(d / "sidecar.crt"),
            "CRITIQUE_GRPC_TLS_KEY": str(d / "sidecar.key"),
            "CRITIQUE_GRPC_TLS_CLIENT_CA": str(d / "client-ca.crt"),
        },
    )
    try:
        yield stack.start()  # returns once Envoy's gRPC health check of the sidecar passes (over mTLS)
    finally:
        stack.stop()


def test_chat_is_metered_over_mtls_between_envoy_and_the_sidecar(tls_stack: Stack, account: str) -> None:
    config = yaml.safe_load((tls_stack.workdir / "envoy.yaml").read_text())
    [grpc_cluster] = [c for c in config["static_resources"]["clusters"] if c["name"] == "sidecar_grpc"]
    assert grpc_cluster["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"]
    key = funded_key(tls_stack, account, "5")
    start = balance(tls_stack, account)
    raw = client(tls_stack, key).chat.completions.with_raw_response.create(
        model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "hi"}], max_tokens=10
    )
    charged = Decimal(raw.headers["x-critique-credits-charged"])
    assert charged > 0 and balance(tls_stack, account) == start - charged
    log = (tls_stack.workdir / "sidecar.log").read_text()
    assert "gRPC listener uses mTLS" in log
