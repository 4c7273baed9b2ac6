"""The gRPC listener's transport: plaintext, TLS, or mTLS (a client CA is given).

Certificate, key and client CA are read from files and re-read when one of them changes: gRPC
asks before every new connection's handshake, so a rotated certificate is used from the next
connection on without a restart (connections already open keep theirs)."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)


class _CertificateFiles:
    """Hands gRPC a new certificate configuration when a file's mtime or size has changed."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self._paths = [p for p in (cert, key, client_ca) if p is not None]
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._seen = self._stamp()

    def _stamp(self) -> tuple[tuple[int, int], ...]:
        return tuple((s.st_mtime_ns, s.st_size) for s in (p.stat() for p in self._paths))

    def load(self) -> Any:
        cert, key = self._cert.read_bytes(), self._key.read_bytes()
        ca = self._client_ca.read_bytes() if self._client_ca else None
        # gRPC takes any bytes here and fails later, in native code, at the next handshake; a
        # half-written file (a renewal caught mid-write) is refused here instead.
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        check.load_cert_chain(self._cert, self._key)  # parses both, and checks they are a pair
        if ca is not None:
            check.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        return grpc.ssl_server_certificate_configuration([(key, cert)], ca)

    def fetch(self) -> Any:
        try:
            stamp = self._stamp()
            if stamp == self._seen:
                return None
            config = self.load()
        except (OSError, ValueError) as exc:  # half-written or missing: keep the current certificate
            log.warning("TLS files unreadable, keeping the current certificate: %s", exc)
            return None
        self._seen = stamp
        log.info("TLS certificate files changed: new connections use the new ones")
        return config


def add_grpc_port(server: Any, address: str, cert: Path | None, key: Path | None, client_ca: Path | None) -> None:
    """Listen on `address`: TLS when a certificate is given, mTLS when a client CA is too."""
    if cert is None or key is None:
        server.add_insecure_port(address)
        return
    files = _CertificateFiles(cert, key, client_ca)
    credentials = grpc.dynamic_ssl_server_credentials(
        files.load(), files.fetch, require_client_authentication=client_ca is not None
    )
    server.add_secure_port(address, credentials)
    log.info("gRPC listener uses %s", "mTLS" if client_ca else "TLS")
