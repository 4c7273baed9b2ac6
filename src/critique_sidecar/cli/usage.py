"""`usage`: billing export, retention trim, the accounts with usage, and the CloudEvents push."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..config import Config
from .common import CliError


async def _usage_cmd(args: argparse.Namespace, redis: Any, config: Config) -> int:
    from ..store.usage_export import UsageExporter
    from ..store.usage_records import rebuild_registry, registered_accounts
    from ..store.usage_retention import UsageRetention

    if args.action == "export":
        if args.count < 1:
            raise CliError("--count must be >= 1")
        exporter = UsageExporter(redis, args.account, args.group, args.consumer, min_idle_ms=args.min_idle_ms)
        await exporter.ensure_group(args.start_id)
        deliveries = await exporter.read(args.count)
        for d in deliveries:
            sys.stdout.write(json.dumps({**d.record, "redelivered": d.redelivered}) + "\n")
        sys.stdout.flush()  # printed (and flushed) before acknowledging: at-least-once
        if not args.no_ack:
            await exporter.ack([d.id for d in deliveries])
        return 0
    if args.action == "trim":
        days = args.retention_days if args.retention_days is not None else config.usage_retention_days
        retention = UsageRetention(redis, days, warn_length=config.usage_stream_maxlen)
        results = [await retention.trim(args.account)] if args.account else await retention.trim_all()
        for r in results:
            row = {
                "account": r.account,
                "deleted": r.deleted,
                "kept_from": r.min_id,
                "held_by_group": r.held_by,
                "length": r.length,
            }
            print(json.dumps(row) if args.json else " ".join(f"{k}={v}" for k, v in row.items()))
        return 0
    if args.action == "push":
        return await _usage_push(args, redis, config)
    for account in await rebuild_registry(redis) if args.rebuild else await registered_accounts(redis):
        print(account)
    return 0


async def _usage_push(args: argparse.Namespace, redis: Any, config: Config) -> int:
    from ..app import usage_push_worker

    if args.url:
        config = config.model_copy(update={"usage_push_url": args.url})
    if not config.usage_push_url:
        raise CliError("usage push: give --url or set CRITIQUE_USAGE_PUSH_URL")
    worker = usage_push_worker(redis, config)
    if not args.once:
        await worker.run_forever()
        return 0
    try:
        while await worker.push_once():
            pass
    finally:
        await worker.client.aclose()
    print(json.dumps({"pushed": worker.pushed}))
    return 0
