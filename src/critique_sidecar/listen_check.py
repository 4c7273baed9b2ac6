"""Before serving: every listen address can be bound, or one line says which is taken.

gRPC and uvicorn report a taken port in their own ways (a native log line and a traceback;
an error log and a process that runs on without its listener). Binding each address first, as
the servers will (SO_REUSEADDR: the last run's TIME-WAIT connections do not count), turns that
into one line naming the setting."""

from __future__ import annotations

import socket

from .config import Config


class ListenTaken(Exception):
    """A listen address another process already listens on."""


def _bindable(address: str) -> str | None:
    """None when `address` (HOST:PORT, [IPv6]:PORT) can be bound; else why not."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:
        return f"cannot be resolved ({exc})"
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as exc:
            return "is in use by another process" if exc.errno == 98 else f"cannot be bound ({exc.strerror})"
    return None


def check_listen_free(config: Config, fields: tuple[str, ...], extra: str | None = None) -> None:
    """Raise ListenTaken naming the first of these settings (CRITIQUE_<FIELD>) that cannot listen."""
    named = [(f"CRITIQUE_{f.upper()}", getattr(config, f)) for f in fields]
    if extra is not None:
        named.insert(0, ("the gateway's listen address", extra))
    for name, address in named:
        if address:
            problem = _bindable(address)
            if problem is not None:
                raise ListenTaken(f"{name} {address} {problem}: stop that process or choose another address")
