"""The streaming benchmark's client: N concurrent SSE streams, timed chunk by chunk.

A separate process (its CPU is not the gateway's), no HTTP library: a uvloop Protocol per stream
that sends one request, de-chunks the response and notes when each upstream chunk arrived. The
upstream (bench/sse_upstream.py) writes its send time into each chunk's `id`, so per chunk:

    transit   = received - sent                (the gateway's delay on this chunk)
    added gap = transit(i) - transit(i - 1)    (the gap the client saw minus the gap the upstream made)

Prints one JSON object: counts, time to first token, transit and added-gap percentiles (us).

  .venv/bin/python bench/sse_client.py --url http://127.0.0.1:10000/api/v1/chat/completions \\
      --key crt_... --concurrency 100 --streams 100 --chunks 200 --gap-us 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import uvloop

_ID = re.compile(rb'"id":"b(\d+)"')
_CHARGE = b": x-critique-request-id="


class StreamClient(asyncio.Protocol):
    def __init__(self, request: bytes, done: asyncio.Future[StreamClient]) -> None:
        self.request, self.done = request, done
        self.raw = bytearray()  # undecoded bytes
        self.body = bytearray()  # de-chunked bytes not yet split into events
        self.head_seen = False
        self.status = 0
        self.sent_ns = 0
        self.first_ns = 0
        self.transits: list[int] = []
        self.events = 0
        self.charged = False
        self.saw_done = False
        self.usage_chunks = 0
        self.error = ""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.sent_ns = time.monotonic_ns()
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.error = self.error or f"connection lost: {exc}"
            self.done.set_result(self)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.raw += data
        if not self.head_seen:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.raw[:end])
            self.status = int(head.split(b" ", 2)[1])
            del self.raw[: end + 4]
            self.head_seen = True
            if self.status != 200 or b"chunked" not in head.lower():
                self.error = f"status {self.status}: {head[:200]!r}"
                self.transport.close()
                return
        finished = self._dechunk()
        self._events(now)
        if finished:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(self)

    def _dechunk(self) -> bool:
        raw = self.raw
        pos = 0
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(raw[pos:eol].split(b";")[0], 16)
            if size == 0:
                return True
            if len(raw) < eol + 2 + size + 2:
                break
            self.body += raw[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
        del raw[:pos]
        return False

    def _events(self, now: int) -> None:
        body = self.body
        end = body.rfind(b"\n\n")
        if end < 0:
            return
        complete = bytes(body[: end + 2])
        del body[: end + 2]
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            self.events += 1
            if event.startswith(_CHARGE):
                self.charged = True
            elif event.startswith(b"data: [DONE]"):
                self.saw_done = True
            elif b'"usage"' in event:
                self.usage_chunks += 1
            else:
                m = _ID.search(event)
                if m:
                    if not self.first_ns:
                        self.first_ns = now
                    self.transits.append(now - int(m.group(1)))


def _request(url: str, key: str | None, chunks: int, gap_us: int, include_usage: bool) -> bytes:
    parts = urlsplit(url)
    body: dict[str, Any] = {
        "model": "deepseek/deepseek-v4-flash",
        "messages": [{"role": "user", "content": "Summarise the retry policy in three bullets."}],
        "stream": True,
        "max_tokens": chunks + 16,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    data = json.dumps(body, separators=(",", ":")).encode()
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"host: {parts.netloc}",
        "content-type: application/json",
        f"content-length: {len(data)}",
        f"x-bench-chunks: {chunks}",
        f"x-bench-gap-us: {gap_us}",
        "connection: close",
    ]
    if key:
        lines.append(f"authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def one(host: str, port: int, request: bytes, limit_s: float) -> StreamClient:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[StreamClient] = loop.create_future()
    transport, client = await loop.create_connection(lambda: StreamClient(request, done), host, port)
    try:
        return await asyncio.wait_for(done, limit_s)
    except TimeoutError:
        client.error = "timed out"
        return client
    finally:
        transport.close()


def pct(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0  # ns -> us


async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = _request(args.url, args.key, args.chunks, args.gap_us, args.include_usage)
    timeout = 30 + args.chunks * args.gap_us / 1e6 * 2
    sem = asyncio.Semaphore(args.concurrency)
    stagger = args.gap_us / 1e6 / max(args.concurrency, 1)

    async def paced(i: int) -> StreamClient:
        if i < args.concurrency:
            await asyncio.sleep(i * stagger)  # spread the first ticks over one gap
        async with sem:
            return await one(host, port, request, timeout)

    t0 = time.monotonic()
    clients = await asyncio.gather(*(paced(i) for i in range(args.streams)))
    elapsed = time.monotonic() - t0
    transits: list[int] = []
    gaps: list[int] = []
    ttft: list[int] = []
    errors: list[str] = []
    for c in clients:
        if c.error or not c.saw_done or len(c.transits) != args.chunks:
            errors.append(c.error or f"incomplete: {len(c.transits)} chunks, done={c.saw_done}")
            continue
        transits.extend(c.transits)
        gaps.extend(b - a for a, b in zip(c.transits, c.transits[1:], strict=False))
        ttft.append(c.first_ns - c.sent_ns)
    return {
        "streams": args.streams,
        "completed": args.streams - len(errors),
        "errors": errors[:5],
        "error_count": len(errors),
        "chunks": len(transits),
        "elapsed_s": elapsed,
        "charged_streams": sum(c.charged for c in clients),
        "usage_chunks_seen": sum(c.usage_chunks for c in clients),
        "ttft_ms": {"p50": pct(ttft, 0.5) / 1000, "p99": pct(ttft, 0.99) / 1000},
        "transit_us": {"p50": pct(transits, 0.5), "p99": pct(transits, 0.99)},
        # Added gap: symmetric around 0; its p50 is ~0 and the tails are the jitter we add.
        "added_gap_us": {"p50": pct(gaps, 0.5), "p99": pct(gaps, 0.99)},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--key")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--chunks", type=int, default=200)
    p.add_argument("--gap-us", type=int, default=20000)
    p.add_argument("--include-usage", action="store_true", help="the client asks for usage itself")
    args = p.parse_args()
    result = uvloop.run(run(args))
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
