"""A burst of concurrent SSE streams through the real ASGI gateway (`critique-sidecar gateway`)
against a real local model server: every stream completes and is charged in band, every one is
settled exactly once in the ledger, and the second burst reuses the first one's upstream
connections (one per stream in flight, none opened again)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from critique_sidecar.devtools.stack import Stack, free_port

from .helpers import balance, expected_charge, funded_key, usage_records, wait_for_records

STREAMS = 100
MODEL = "deepseek/deepseek-v4-flash"
PROMPT, COMPLETION = 10, 3


def _event(payload: dict[str, object]) -> bytes:
    data = b"data: " + json.dumps(payload).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk(delta: dict[str, str] | None, usage: dict[str, int] | None = None) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
    body: dict[str, object] = {"id": "c1", "object": "chat.completion.chunk", "model": MODEL, "choices": choices}
    if usage:
        body["usage"] = usage
    return _event(body)


STREAM = (
    _chunk({"role": "assistant", "content": ""})
    + b"".join(_chunk({"content": " tok"}) for _ in range(COMPLETION))
    + _chunk(None, {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION, "total_tokens": PROMPT + COMPLETION})
    + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
)


class SseUpstream:
    """HTTP/1.1 keep-alive SSE model server; holds every answer until `expected` requests arrived."""

    def __init__(self) -> None:
        self.connections = 0
        self.arrived = 0
        self.expected = 0
        self.all_arrived = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                await reader.readexactly(int(fields.get(b"content-length", b"0")))
                self.arrived += 1
                if self.arrived >= self.expected:
                    self.all_arrived.set()
                await self.all_arrived.wait()  # every stream of the burst is in flight at once
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                writer.write(STREAM)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture(scope="module")
def gateway_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis and the ASGI gateway, its models sent to a port the test's upstream listens on."""
    stack = Stack(Path(tmp_path_factory.mktemp("burst")), ports={"upstream": free_port()}, start_upstream=False,
                  front_doors=("asgi",))  # fmt: skip
    try:
        yield stack.start()
    finally:
        stack.stop()


async def _one(client: httpx.AsyncClient, url: str, key: str) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "burst"}], "max_tokens": 16, "stream": True}
    async with client.stream("POST", url, json=body, headers={"authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200, await response.aread()
        return await response.aread()


async def test_a_burst_of_streams_all_complete_and_settle(gateway_stack: Stack, account: str) -> None:
    up = SseUpstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", gateway_stack.ports["upstream"], backlog=1024)
    key = funded_key(gateway_stack, account, "10")
    url = gateway_stack.gateway_url + "/api/v1/chat/completions"
    credits, _ = expected_charge(MODEL, PROMPT, COMPLETION)
    limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=STREAMS)
    async with server:
        for burst in (1, 2):
            up.expected, up.all_arrived = burst * STREAMS, asyncio.Event()
            async with httpx.AsyncClient(limits=limits, timeout=60) as client:  # cold: only the gateway's pool is warm
                bodies = await asyncio.gather(*(_one(client, url, key) for _ in range(STREAMS)))
            assert all(b.endswith(b"data: [DONE]\n\n") for b in bodies)
            assert all(f"x-critique-credits-charged={credits} ".encode() in b for b in bodies)
            assert up.connections == STREAMS  # the second burst opened none
    records = wait_for_records(gateway_stack, account, 2 * STREAMS)
    assert len(records) == 2 * STREAMS == len({r["request_id"] for r in records})
    assert {(r["status"], r["credits"]) for r in records} == {("ok", str(int(Decimal(credits) * 1_000_000)))}
    assert balance(gateway_stack, account) == Decimal("10") - 2 * STREAMS * Decimal(credits)
    assert len(usage_records(gateway_stack, account)) == 2 * STREAMS  # no late second settlement
