"""`make run`'s port check (devtools/stack.py): a port whose last connections are in TIME-WAIT
is free, as it is for the servers that bind it with SO_REUSEADDR; a listening port is taken."""

from __future__ import annotations

import socket

import pytest

from critique_sidecar.devtools.stack import PortTaken, check_ports_free


def _time_wait_port() -> int:
    """A port whose server closed first after one connection: the server side is in TIME-WAIT."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = int(server.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server closes first: its end of the connection goes to TIME-WAIT
    server.close()
    assert client.recv(1) == b""  # the close reached the client
    client.close()
    return port


def test_a_port_left_in_time_wait_by_the_last_run_is_free() -> None:
    port = _time_wait_port()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the check did before: TIME-WAIT counted as taken
    check_ports_free({"upstream": port})


def test_a_listening_port_is_taken() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(PortTaken, match=f"port {port} \\(upstream\\) is in use"):
            check_ports_free({"upstream": port})
