"""asgi/_pool.py and the gateway's upstream client against real local sockets: an idle
connection goes to one waiting request, connections are reused and closed ones replaced, and
a connect slower than the old 0.25 s timeout is waited for (Config.upstream_connect_timeout_s)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpcore
import httpx
from httpcore._async.connection_pool import AsyncPoolRequest

from critique_sidecar.asgi.gateway import Forward, upstream_client, upstreams
from critique_sidecar.config import Config
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.devtools.stack import wait_until

from .test_asgi_gateway import drive, status_and_json

CATALOG = load_catalog()


class Upstream:
    """A real HTTP/1.1 keep-alive server: counts connections; every answer waits for `gate`."""

    def __init__(self) -> None:
        self.connections = 0
        self.arrived = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self._arrival = asyncio.Condition()
        self.port = 0

    async def wait_arrivals(self, n: int) -> None:
        async with self._arrival:
            await asyncio.wait_for(self._arrival.wait_for(lambda: self.arrived >= n), 10)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                await reader.readexactly(int(fields.get(b"content-length", b"0")))
                close = fields.get(b"x-close", b"").strip() == b"1"
                async with self._arrival:
                    self.arrived += 1
                    self._arrival.notify_all()
                await self.gate.wait()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                    + (b"connection: close\r\n" if close else b"")
                    + b"\r\nok"
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    async with server:
        yield up


async def burst(client: httpx.AsyncClient, up: Upstream, n: int, headers: dict[str, str] | None = None) -> None:
    """n requests in flight at once (the upstream answers once all n have arrived)."""
    up.gate.clear()
    base = up.arrived
    tasks = [asyncio.create_task(client.post(f"http://127.0.0.1:{up.port}/x", headers=headers)) for _ in range(n)]
    await up.wait_arrivals(base + n)
    up.gate.set()
    assert [r.status_code for r in await asyncio.gather(*tasks)] == [200] * n


async def test_an_idle_connection_goes_to_one_waiting_request() -> None:
    """httpcore's own pass hands the first idle connection to all four (three of them then
    fail with ConnectionNotAvailable and retry: the churn that overloaded the gateway)."""
    async with upstream() as up:
        client = upstream_client(Config().upstream_connect_timeout_s)
        await burst(client, up, 3)
        pool = client._transport._pool  # type: ignore[attr-defined]
        idle = list(pool.connections)
        assert up.connections == 3 and [c.is_idle() for c in idle] == [True] * 3
        waiting = [AsyncPoolRequest(httpcore.Request("POST", f"http://127.0.0.1:{up.port}/x")) for _ in range(4)]
        pool._requests.extend(waiting)
        assert pool._assign_requests_to_connections() == []
        assigned = [w.connection for w in waiting]
        assert assigned[:3] == idle and assigned[3] is not None and assigned[3] not in idle
        # A later pass (another request arriving) neither reassigns nor closes a reserved one.
        extra = AsyncPoolRequest(httpcore.Request("POST", f"http://127.0.0.1:{up.port}/x"))
        pool._requests.append(extra)
        assert pool._assign_requests_to_connections() == []
        assert [w.connection for w in waiting] == assigned and extra.connection not in assigned
        pool._requests.clear()
        await client.aclose()


async def test_a_burst_on_a_warm_pool_reuses_every_connection() -> None:
    async with upstream() as up:
        client = upstream_client(Config().upstream_connect_timeout_s)
        for _ in range(3):
            await burst(client, up, 40)
        assert up.connections == 40  # the first burst opened them, the others reused them
        await client.aclose()


async def test_a_connection_the_upstream_closes_is_replaced() -> None:
    async with upstream() as up:
        client = upstream_client(Config().upstream_connect_timeout_s)
        await burst(client, up, 2, {"x-close": "1"})
        await burst(client, up, 2)
        await burst(client, up, 2)
        assert up.connections == 4
        await client.aclose()


def _syn_sent_to(port: int) -> bool:
    """A socket on this host is sending SYNs to 127.0.0.1:port (its SYN was dropped)."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        cols = line.split()
        if cols[2] == f"0100007F:{port:04X}" and cols[3] == "02":  # rem_address, state SYN_SENT
            return True
    return False


class SlowAccept(threading.Thread):
    """A listener whose accept queue is full, so the first SYN is dropped and the client's
    connect completes only on its retransmission (Linux: 1 s later). Once a SYN is seen
    waiting, the queue is drained and the connection answered."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        self.port = self.listener.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port))  # the queue's one place

    def run(self) -> None:
        wait_until(lambda: _syn_sent_to(self.port), "a connect waiting on the full accept queue")
        self.listener.accept()[0].close()  # the filler: the retransmitted SYN now fits
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return  # closed: the client gave up first
        with conn:
            conn.recv(65536)
            conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\ncontent-type: application/json\r\n\r\n{"ok":true}')

    def close(self) -> None:
        self.filler.close()
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept()
        self.listener.close()


async def _through_slow_accept(connect_timeout_s: float) -> tuple[int, object]:
    slow = SlowAccept()
    slow.start()
    try:
        forward = Forward(upstreams(CATALOG, connect_timeout_s, f"http://127.0.0.1:{slow.port}/v1"))
        sent = await drive(forward, {"x-critique-model": "tencent/hy3-preview"})
        return status_and_json(sent)
    finally:
        slow.close()
        await asyncio.to_thread(slow.join, 10)


async def test_a_connect_slower_than_a_quarter_second_is_waited_for() -> None:
    """With the default connect timeout (5 s) a connect that needs a SYN retransmission
    (~1 s) succeeds; with the old 0.25 s the same connect was a 502."""
    assert await _through_slow_accept(Config().upstream_connect_timeout_s) == (200, {"ok": True})
    status, body = await _through_slow_accept(0.25)
    assert (status, body["error"]["code"]) == (502, "upstream_error")  # type: ignore[index]
