"""Memory per open stream: N concurrent slow SSE streams through Envoy and the sidecar.

    .venv/bin/python bench/streams.py [--streams 1000]

Measures the sidecar's RSS with every stream open and delivering (each has received its first
chunk and its hold is placed) against its RSS before, and prints the cost per stream. The
Python fake upstream serves the slow streams; its memory is not the sidecar's."""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from pathlib import Path

import httpx

from critique_sidecar.devtools.stack import Stack

BENCH = Path(__file__).resolve().parent


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def hold_streams(url: str, key: str, n: int, pid: int) -> dict[str, float]:
    body = {"messages": [{"role": "user", "content": "[[slow:250]] [[tokens:400]]"}], "stream": True, "max_tokens": 400}
    started = asyncio.Semaphore(0)
    release = asyncio.Event()
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one() -> None:
            async with client.stream("POST", url, headers={"authorization": f"Bearer {key}"}, json=body) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"stream got {r.status_code}: {(await r.aread())[:200]!r}")
                async for _ in r.aiter_bytes():
                    started.release()
                    break
                await release.wait()

        tasks = [asyncio.create_task(one()) for _ in range(n)]
        t0 = time.monotonic()
        for _ in range(n):
            waiter = asyncio.create_task(started.acquire())
            done, _ = await asyncio.wait(
                {waiter, *[t for t in tasks if t.done()]}, timeout=120, return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t is not waiter and t.exception():
                    raise t.exception()  # type: ignore[misc]
            if waiter not in done:
                raise TimeoutError("streams did not all start")
        opened_s = time.monotonic() - t0
        rss_open = rss_kb(pid)
        release.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"opened_s": opened_s, "rss_open_kb": rss_open}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=1000)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # children inherit it

    stack = Stack(BENCH / "out" / "streams")
    try:
        stack.start()
        stack.cli("credits", "grant", "--account", "streams", "--credits", "1000000")
        key = stack.create_key("streams")["key"]
        pid = stack.procs["sidecar"].pid
        url = stack.base_url + "/api/v1/chat/completions"
        asyncio.run(hold_streams(url, key, 20, pid))  # warm up: pools, buffers, imports
        before = rss_kb(pid)
        result = asyncio.run(hold_streams(url, key, args.streams, pid))
    finally:
        stack.stop()
    per_stream = (result["rss_open_kb"] - before) * 1024 / args.streams
    print(
        f"{args.streams} concurrent open streams: sidecar RSS {before / 1024:.1f} MB -> {result['rss_open_kb'] / 1024:.1f} MB "
        f"= {per_stream / 1024:.1f} KB per stream (target <= 64 KB); all open after {result['opened_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
