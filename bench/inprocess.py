"""Our own CPU per metered JSON request, in process: the real ExtProcServicer.Process driven with
the four ext_proc messages Envoy sends (prebuilt protobufs), the real Meter, metrics and request
log, an in-memory ledger (tests/fakes.py) and no gRPC or Redis. What `make bench` measures
above the floor is this plus the two Redis round trips and the event-loop work around them.

Also reports the garbage collector's time per request (gc.callbacks), with the sidecar's GC
tuning (app.tune_garbage_collector) or, with --gc-default, CPython's defaults.

  .venv/bin/python bench/inprocess.py
  .venv/bin/python bench/inprocess.py --gc-default --requests 20000
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import uvloop
from envoy.config.core.v3 import base_pb2 as core_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from prometheus_client import CollectorRegistry

from critique_sidecar.app import tune_garbage_collector
from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.observe import ObservedLedger
from critique_sidecar.envoy.ext_proc import ExtProcServicer
from critique_sidecar.observability import RequestLog, Telemetry, configure_logging
from critique_sidecar.observability.metrics import Metrics

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
from bench.envoy_configs import CHAT_COMPLETION, MODEL  # noqa: E402
from tests.fakes import MemoryKeys, MemoryLedger  # noqa: E402


def header_map(headers: dict[str, str]) -> core_pb.HeaderMap:
    return core_pb.HeaderMap(headers=[core_pb.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()])


class _Context:
    """The part of grpc.aio.ServicerContext the servicer uses."""

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        pass


def messages(key: str) -> list[pb.ProcessingRequest]:
    """What Envoy sends for the benchmark's request (bench/run.py): same headers, body, reply."""
    headers = {
        ":method": "POST", ":path": "/api/v1/chat/completions", ":authority": "127.0.0.1", ":scheme": "http",
        "authorization": f"Bearer {key}", "content-type": "application/json", "user-agent": "wrk",
        "x-forwarded-proto": "http", "x-request-id": "5d1f0c7e-9a8b-4c3d-8e2f-1a2b3c4d5e6f",
    }  # fmt: skip
    body = orjson.dumps({"model": MODEL, "max_tokens": 256,
                         "messages": [{"role": "user", "content": "Summarise the retry policy in three bullets."}]})  # fmt: skip
    completion = orjson.dumps(CHAT_COMPLETION)
    reply_headers = {":status": "200", "content-type": "application/json", "content-length": str(len(completion))}
    return [
        pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(headers))),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)),
        pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=header_map(reply_headers))),
        pb.ProcessingRequest(response_body=pb.HttpBody(body=completion, end_of_stream=True)),
    ]


async def run(requests: int, tune_gc: bool) -> tuple[float, float]:
    """(our CPU us per request, GC us per request)."""
    keys, ledger = MemoryKeys(), MemoryLedger()
    key = keys.add("acct-bench")
    telemetry = Telemetry(Metrics(CollectorRegistry(), process=False), RequestLog())
    meter = Meter(load_catalog(), ObservedLedger(ledger, telemetry), Decimal("0.01"), observer=telemetry)
    servicer = ExtProcServicer(Authenticator(keys, cache_ttl_s=3600), meter)
    exchange = messages(key)

    async def one() -> None:
        async def from_envoy() -> AsyncIterator[pb.ProcessingRequest]:
            for message in exchange:
                yield message

        async for _ in servicer.Process(from_envoy(), _Context()):  # type: ignore[arg-type]
            pass

    for _ in range(500):  # warm: caches, metric children, the key cache
        await one()
    if tune_gc:
        tune_garbage_collector()
    gc_seconds = 0.0
    started = 0.0

    def timed(phase: str, info: dict[str, int]) -> None:
        nonlocal gc_seconds, started
        if phase == "start":
            started = time.perf_counter()
        else:
            gc_seconds += time.perf_counter() - started

    gc.callbacks.append(timed)
    began = time.process_time()
    for i in range(requests):
        await one()
        if i % 1000 == 999:  # the fake ledger keeps every record: keep its memory flat
            ledger.records.clear()
            ledger.holds.clear()
            ledger.settled.clear()
    cpu = time.process_time() - began
    gc.callbacks.remove(timed)
    return cpu / requests * 1e6, gc_seconds / requests * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=30000)
    p.add_argument("--gc-default", action="store_true", help="keep CPython's GC settings (no freeze)")
    args = p.parse_args()
    with open(os.devnull, "w") as sink:
        configure_logging("INFO", "json", sink)  # the request log line is built and written
        cpu, gc_us = uvloop.run(run(args.requests, not args.gc_default))
    label = "CPython's default GC" if args.gc_default else "the sidecar's GC tuning"
    print(f"{cpu:.1f} us of CPU per metered request in process ({gc_us:.1f} us of it in the GC; {label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
