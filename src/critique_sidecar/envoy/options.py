"""What `envoy-config` and `envoy-merge` are told (EnvoyOptions), and the checks that refuse
what Envoy would reject: addresses, the stat prefix, the path prefix, the sidecar TLS files."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..core.wire import MAX_REQUEST_BODY_BYTES, MAX_RESPONSE_BODY_BYTES


class EnvoyOptionError(ValueError):
    """An option Envoy would reject; the message says which and why."""


def listen_address(text: str, what: str = "--listen") -> tuple[str, int]:
    """IP:port (IPv6 in brackets) -> (ip, port). Envoy binds listeners to IP literals only."""
    host, port = _split_hostport(text, what)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise EnvoyOptionError(
            f"{what} {text!r}: Envoy listens on an IP address, not a host name (e.g. 127.0.0.1:{port} or [::]:{port})"
        ) from None
    return host, port


def endpoint_address(text: str, what: str) -> tuple[str, int]:
    """host:port for a cluster endpoint: an IP or a DNS name (then the cluster resolves it)."""
    return _split_hostport(text, what)


def _split_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise EnvoyOptionError(f"{what} {text!r}: write an IPv6 address in brackets, e.g. [::1]:{port}")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EnvoyOptionError(f"{what} {text!r}: expected HOST:PORT with a port from 1 to 65535")
    return host, int(port)


# One or more /segments of unreserved URL characters; no '.' or '..' segment (Envoy normalises
# those away, so a route written with one would never match).
_PATH_PREFIX = re.compile(r"(/[A-Za-z0-9_~.-]+)+")


def check_path_prefix(prefix: str) -> None:
    """'' (none) or a path like /llm or /ai/v2 the product's paths go under."""
    if not prefix:
        return
    if not _PATH_PREFIX.fullmatch(prefix) or any(seg in (".", "..") for seg in prefix.split("/")):
        raise EnvoyOptionError(
            f"--path-prefix {prefix!r}: expected a path such as /llm (starts with '/', no trailing '/', "
            "segments of letters, digits, '-', '_', '.' and '~', no '.' or '..' segment)"
        )


@dataclass(frozen=True)
class SidecarTls:
    """Envoy -> sidecar gRPC over TLS: the CA that signed the sidecar's certificate, and for
    mTLS the client certificate and key Envoy presents (files on Envoy's host)."""

    ca: str
    cert: str | None = None
    key: str | None = None
    sni: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise EnvoyOptionError("--sidecar-tls-cert and --sidecar-tls-key go together (mTLS)")


@dataclass(frozen=True)
class EnvoyOptions:
    listen: str = "127.0.0.1:8080"
    admin: str = "127.0.0.1:9901"
    sidecar_grpc: tuple[str, ...] = ("127.0.0.1:9001",)
    sidecar_http: str = "127.0.0.1:9002"
    # "ext_proc": authorise inside the one ext_proc stream on the chat route (one gRPC stream
    # per request); "ext_authz": ext_authz and ext_proc both run (two streams).
    chat_auth: str = "ext_proc"
    max_request_bytes: int = MAX_REQUEST_BODY_BYTES
    # Largest JSON response Envoy buffers for metering (at least a request body's limit: Envoy
    # keeps one buffer limit per stream); keep it equal to the sidecar's CRITIQUE_MAX_RESPONSE_BYTES.
    max_response_bytes: int = MAX_RESPONSE_BODY_BYTES
    # Past this Envoy answers 503 itself; the sidecar's own Redis timeout (0.5 s) fails first.
    sidecar_timeout_ms: int = 2000
    upstream_timeout_s: int = 600
    stat_prefix: str = "ingress"
    virtual_host: str = "critique"
    domains: tuple[str, ...] = ("*",)
    sidecar_tls: SidecarTls | None = None
    # Every product path goes under it (/llm -> /llm/api/v1/chat/completions); Envoy strips
    # it before the sidecar or a model server sees the path.
    path_prefix: str = ""

    def __post_init__(self) -> None:
        if self.chat_auth not in ("ext_proc", "ext_authz"):
            raise EnvoyOptionError("chat_auth must be 'ext_proc' or 'ext_authz'")
        listen_address(self.listen, "--listen")
        listen_address(self.admin, "--admin")
        if not self.sidecar_grpc:
            raise EnvoyOptionError("--sidecar-grpc: at least one address")
        for a in self.sidecar_grpc:
            endpoint_address(a, "--sidecar-grpc")
        endpoint_address(self.sidecar_http, "--sidecar-http")
        if not self.stat_prefix or not all(c.isalnum() or c in "_-." for c in self.stat_prefix):
            raise EnvoyOptionError(f"--stat-prefix {self.stat_prefix!r}: letters, digits, '_', '-' and '.' only")
        check_path_prefix(self.path_prefix)
        if self.max_response_bytes < 65536:
            raise EnvoyOptionError("--max-response-bytes: at least 65536")

    def public(self, path: str) -> str:
        """Where clients reach one of the product's paths."""
        return self.path_prefix + path
