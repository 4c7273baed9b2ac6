"""A paced SSE model server for the streaming benchmark: cheap enough never to be the bottleneck.

Answers every POST with an OpenAI chat-completions stream: one chunk per "token", each sent at
its own time (a uniformly jittered gap around the mean the request asks for, like a real model),
then the usage chunk when the request asked for it (`"include_usage":true` in its body) and
`data: [DONE]`. Each chunk carries the monotonic time it was written (nanoseconds, in its `id`),
so the client can tell the gap the upstream made from the gap it saw.

Per request, from headers (defaults in brackets): x-bench-chunks [200], x-bench-gap-us [20000],
x-bench-jitter [0.5] (each gap is mean * uniform(1 - jitter, 1 + jitter)).

No HTTP library: a uvloop Protocol per connection, timers instead of tasks, chunks pre-encoded
except their timestamp. HTTP/1.1 with chunked transfer encoding and keep-alive.

  .venv/bin/python bench/sse_upstream.py --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import uvloop

MODEL = "deepseek/deepseek-v4-flash"
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
# One realistic chunk: about the size a model server sends for one token.
_CHUNK = (
    b'data: {"id":"b%d","object":"chat.completion.chunk","created":1767225600,"model":"'
    + MODEL.encode()
    + b'","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":{"content":" token"},'
    b'"logprobs":null,"finish_reason":null}]}\n\n'
)
_FIRST = _CHUNK.replace(b'"content":" token"', b'"role":"assistant","content":""')
_LAST = _CHUNK.replace(
    b'"content":" token"},"logprobs":null,"finish_reason":null', b'},"logprobs":null,"finish_reason":"stop"'
)
_USAGE = (
    b'data: {"id":"b%d","object":"chat.completion.chunk","created":1767225600,"model":"'
    + MODEL.encode()
    + b'","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":%d,"total_tokens":%d}}\n\n'
)
_DONE = b"data: [DONE]\n\n"


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Stream:
    """One response being written, driven by loop.call_at."""

    __slots__ = ("chunks", "gap_s", "i", "jitter", "loop", "next_at", "proto", "usage")

    def __init__(self, proto: SseServer, chunks: int, gap_s: float, jitter: float, usage: bool) -> None:
        self.proto, self.chunks, self.gap_s, self.jitter, self.usage = proto, chunks, gap_s, jitter, usage
        self.loop = asyncio.get_running_loop()
        self.i = 0
        self.next_at = self.loop.time()
        self.tick()

    def tick(self) -> None:
        transport = self.proto.transport
        if transport is None or transport.is_closing():
            return
        i = self.i
        now = time.monotonic_ns()
        if i == 0:
            transport.write(_HEAD + _frame(_FIRST % now))
        elif i < self.chunks - 1:
            transport.write(_frame(_CHUNK % now))
        else:
            tail = _LAST % now
            if self.usage:
                tail += _USAGE % (now, self.chunks, self.chunks + 19)
            transport.write(_frame(tail + _DONE) + b"0\r\n\r\n")
            self.proto.finished()
            return
        self.i = i + 1
        # Absolute schedule: a late tick does not push every later one back.
        self.next_at += self.gap_s * (1.0 + self.jitter * (2.0 * random.random() - 1.0))
        self.loop.call_at(self.next_at, self.tick)


class SseServer(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = b""
        self.busy = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._maybe_request()

    def finished(self) -> None:
        self.busy = False
        self._maybe_request()

    def _maybe_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        length = int(headers.get("content-length", "0"))
        if "chunked" in headers.get("transfer-encoding", ""):
            self.transport.write(_BAD)  # the gateways under test send a length
            self.transport.close()
            return
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        self.busy = True
        Stream(
            self,
            chunks=max(2, int(headers.get("x-bench-chunks", "200"))),
            gap_s=int(headers.get("x-bench-gap-us", "20000")) / 1e6,
            jitter=float(headers.get("x-bench-jitter", "0.5")),
            usage=b'"include_usage":true' in body.replace(b" ", b""),
        )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SseServer, "127.0.0.1", port, backlog=4096)
    print(f"paced SSE upstream on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    uvloop.run(serve(p.parse_args().port))


if __name__ == "__main__":
    main()
