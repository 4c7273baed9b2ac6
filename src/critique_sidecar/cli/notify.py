"""Budget notifications: `notify-worker` delivers them, `notify dead-letters` lists failures."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..config import Config
from .common import CliError


async def _notify_worker(args: argparse.Namespace, redis: Any, config: Config) -> int:
    from ..app import notify_worker

    worker = notify_worker(redis, config)
    if not args.once:
        await worker.run_forever(wake_channel=not config.redis_cluster)
        return 0
    try:
        await worker.poll(pending=True)
        while await worker.poll() or worker._inflight:
            await worker.drain()
    finally:
        await worker.client.aclose()
    print(json.dumps({"delivered": worker.delivered, "dead_lettered": worker.dead}))
    return 0


async def _notify_cmd(args: argparse.Namespace, redis: Any) -> int:
    from ..store.notify_outbox import dead_letters

    if args.count < 1:
        raise CliError("--count must be >= 1")
    for entry in await dead_letters(redis, args.count):
        if args.json:
            print(json.dumps(entry))
        else:
            e = entry["event"]
            print(
                f"{e['id']} account={entry['account']} kind={e['kind']} attempts={entry['attempts']} "
                f"error={entry['last_error']!r} dead_at_ms={entry['dead_at_ms']}"
            )
    return 0
