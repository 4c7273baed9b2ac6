"""Client CPU per ledger-sized EVALSHA: redis-py's own client against the hot path's pipelined
connection (src/critique_sidecar/store/batcher.py), at one caller and at eight concurrent ones.
store/batcher.py's docstring quotes the result.

Starts its own redis-server on a free port. `--baseline REF` also measures batcher.py as it was
at a git ref, in the same run (before/after):

    .venv/bin/python bench/redis_client.py --baseline 9fc6c87
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import uvloop
from procs import redis_server

from critique_sidecar.devtools.stack import REPO

# As many keys and arguments as the settlement script gets; the script itself does nothing,
# so what is measured is the client's work.
SOURCE = "return {ARGV[1], #KEYS}"
KEYS = [f"{{acct-bench}}:k{i}" for i in range(13)]
ARGS = ["req_0123456789abcdef01234567", 1515, 8640000, 604800, "x" * 300, "model", "key", 19, 41]


def load_batcher(ref: str | None) -> Any:
    """store/batcher.py from the working tree, or as it was at `ref`."""
    if ref is None:
        from critique_sidecar.store import batcher

        return batcher
    source = subprocess.run(
        ["git", "show", f"{ref}:src/critique_sidecar/store/batcher.py"], cwd=REPO, check=True, capture_output=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "batcher_at_ref.py"
    path.write_bytes(source.replace(b"from ..", b"from critique_sidecar."))
    spec = importlib.util.spec_from_file_location(f"batcher_{ref}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def measure(call: Callable[[], Awaitable[Any]], callers: int, calls: int) -> float:
    """Client CPU (this process, microseconds) per call."""

    async def caller(n: int) -> None:
        for _ in range(n):
            await call()

    await asyncio.gather(*(caller(calls // 10) for _ in range(callers)))  # warm up
    began = time.process_time()
    await asyncio.gather(*(caller(calls) for _ in range(callers)))
    return (time.process_time() - began) / (callers * calls) * 1e6


async def run(port: int, baseline: str | None, calls: int) -> list[tuple[str, int, float]]:
    client = aioredis.Redis(port=port)
    sha = await client.script_load(SOURCE)
    rows: list[tuple[str, int, float]] = []
    script = client.register_script(SOURCE)
    variants: list[tuple[str, Any]] = [("redis-py client (pool)", None), ("batcher (working tree)", load_batcher(None))]
    if baseline:
        variants.append((f"batcher at {baseline}", load_batcher(baseline)))
    for label, module in variants:
        for callers in (1, 8):
            if module is None:
                cpu = await measure(lambda: script(keys=KEYS, args=ARGS), callers, calls)
            else:
                batcher = module.CommandBatcher(client)
                command = ("EVALSHA", sha, len(KEYS), *KEYS, *ARGS)
                cpu = await measure(lambda b=batcher, c=command: b.execute(c), callers, calls)
                await batcher.aclose()
            rows.append((label, callers, cpu))
    await client.aclose()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", metavar="GIT_REF", help="also measure store/batcher.py as it was at this ref")
    p.add_argument("--calls", type=int, default=3000, help="calls per caller (default 3000)")
    args = p.parse_args()
    with redis_server() as port:
        rows = uvloop.run(run(port, args.baseline, args.calls))
    print(f"{'client':34} | callers | client CPU us/call")
    for label, callers, cpu in rows:
        print(f"{label:34} | {callers:7} | {cpu:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
