"""Capture sinks for opted-in payloads (see core/capture.py for the pricing rule)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from ..core.capture import CaptureRecord
from . import keyspace as ks


class RedisStreamSink:
    """Default: one Redis stream per account (Cluster-safe), bounded to `maxlen` entries."""

    def __init__(self, redis: Any, maxlen: int) -> None:
        self._redis = redis
        self._maxlen = maxlen

    async def write(self, record: CaptureRecord) -> None:
        await self._redis.xadd(
            ks.capture_stream(record.account),
            {"request_id": record.request_id, "record": record.to_json()},
            maxlen=self._maxlen,
            approximate=True,
        )


class JsonlFileSink:
    """Alternative: an append-only JSON-lines file (fsynced), for shipping elsewhere."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()

    async def write(self, record: CaptureRecord) -> None:
        line = record.to_json() + b"\n"
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    def _append(self, line: bytes) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
