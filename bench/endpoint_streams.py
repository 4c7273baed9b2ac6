"""Our CPU per streamed event, per endpoint, in process, against the floor: the real
ExtProcServicer.Process (key check, hold, the endpoint's stream reader, settlement, metrics and
request log, an in-memory ledger from tests/fakes.py) and, on the same ext_proc messages, the
bare servicer of `make bench` (bench/bare_ext_proc.py: constant replies, no parsing). No gRPC,
Envoy or Redis: what is left is the per-event work each endpoint's meter adds.

Each stream is what the fake model server sends for that API (devtools/fake/), one event per
response-body message as servers flush them: chat completions, the Responses API, Anthropic
Messages and legacy completions, `--events` text events each.

  .venv/bin/python bench/endpoint_streams.py
  .venv/bin/python bench/endpoint_streams.py --events 500 --streams 400
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from prometheus_client import CollectorRegistry

from critique_sidecar.core.auth import Authenticator
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.metering import Meter
from critique_sidecar.core.observe import ObservedLedger
from critique_sidecar.devtools.fake_upstream import build_app
from critique_sidecar.envoy.ext_proc import ExtProcServicer
from critique_sidecar.observability import RequestLog, Telemetry, configure_logging
from critique_sidecar.observability.metrics import Metrics

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
from bench.bare_ext_proc import BareServicer  # noqa: E402
from bench.envoy_configs import MODEL  # noqa: E402
from bench.inprocess import _Context, header_map  # noqa: E402
from tests.fakes import MemoryKeys, MemoryLedger  # noqa: E402


def requests(events: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Endpoint -> (path, streaming request body); [[tokens:N]] sets the fake's event count.
    The OpenAI streams ask for their usage chunk, as the sidecar asks the model server."""
    text = f"[[tokens:{events}]] Summarise the retry policy in three bullets."
    usage = {"include_usage": True}
    return {
        "chat.completions": (
            "chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream_options": usage},
        ),
        "responses": ("responses", {"model": MODEL, "input": text}),
        "messages": ("messages", {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": text}]}),
        "completions": ("completions", {"model": MODEL, "prompt": text, "max_tokens": 4096, "stream_options": usage}),
    }


async def upstream_events(path: str, body: dict[str, Any]) -> list[bytes]:
    """The fake model server's stream for this request, split into its events."""
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        r = await client.post(f"/v1/{path}", json={**body, "stream": True})
        r.raise_for_status()
    return [event + b"\n\n" for event in r.content.split(b"\n\n") if event]


def exchange(key: str, path: str, body: dict[str, Any], events: list[bytes]) -> list[pb.ProcessingRequest]:
    """What Envoy sends the sidecar for one streamed request: headers, body, response headers,
    then one response-body message per event (the last one ends the stream)."""
    raw = orjson.dumps({**body, "stream": True})
    headers = {
        ":method": "POST", ":path": f"/api/v1/{path}", ":authority": "127.0.0.1", ":scheme": "http",
        "authorization": f"Bearer {key}", "content-type": "application/json",
        "x-request-id": "5d1f0c7e-9a8b-4c3d-8e2f-1a2b3c4d5e6f",
    }  # fmt: skip
    reply = {":status": "200", "content-type": "text/event-stream"}
    out = [
        pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=header_map(headers))),
        pb.ProcessingRequest(request_body=pb.HttpBody(body=raw, end_of_stream=True)),
        pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=header_map(reply))),
    ]
    for i, event in enumerate(events):
        out.append(pb.ProcessingRequest(response_body=pb.HttpBody(body=event, end_of_stream=i == len(events) - 1)))
    return out


def drive(servicer: Any, messages: list[pb.ProcessingRequest]) -> Callable[[], Any]:
    async def one() -> int:
        async def from_envoy() -> AsyncIterator[pb.ProcessingRequest]:
            for message in messages:
                yield message

        replies = 0
        async for _ in servicer.Process(from_envoy(), _Context()):
            replies += 1
        return replies

    return one


async def cpu_per_stream(one: Callable[[], Any], streams: int, ledger: MemoryLedger | None) -> float:
    for _ in range(50):  # warm: caches, metric children, the key cache
        await one()
    began = time.process_time()
    for i in range(streams):
        await one()
        if ledger is not None and i % 200 == 199:  # keep the fake ledger's memory flat
            ledger.records.clear()
            ledger.holds.clear()
            ledger.settled.clear()
    return (time.process_time() - began) / streams * 1e6


async def run(events: int, streams: int) -> list[dict[str, Any]]:
    keys, ledger = MemoryKeys(), MemoryLedger()
    key = keys.add("acct-bench")
    telemetry = Telemetry(Metrics(CollectorRegistry(), process=False), RequestLog())
    meter = Meter(load_catalog(), ObservedLedger(ledger, telemetry), Decimal("0.01"), observer=telemetry)
    ours = ExtProcServicer(Authenticator(keys, cache_ttl_s=3600), meter)
    floor = BareServicer(MODEL, stream=True)
    rows = []
    for name, (path, body) in requests(events).items():
        stream = await upstream_events(path, body)
        messages = exchange(key, path, body, stream)
        metered = await cpu_per_stream(drive(ours, messages), streams, ledger)
        bare = await cpu_per_stream(drive(floor, messages), streams, None)
        ledger.records.clear()
        await drive(ours, messages)()
        [record] = ledger.records  # what was timed was metered: one settled record, this endpoint's
        assert record.endpoint == name and record.output_tokens >= events and not record.estimated, record
        rows.append(
            {
                "endpoint": name,
                "events": len(stream),
                "bytes": sum(len(e) for e in stream),
                "metered_us_per_event": metered / len(stream),
                "floor_us_per_event": bare / len(stream),
                "above_floor_us_per_event": (metered - bare) / len(stream),
                "ratio": metered / bare,
            }
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200, help="text events per stream")
    p.add_argument("--streams", type=int, default=300, help="streams timed per endpoint and servicer")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    with open(os.devnull, "w") as sink:
        configure_logging("INFO", "json", sink)  # the request log line is built and written
        rows = uvloop.run(run(args.events, args.streams))
    print("| endpoint | events | bytes | metered us/event | floor us/event | above floor us/event | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['endpoint']} | {r['events']} | {r['bytes']} | {r['metered_us_per_event']:.2f} "
            f"| {r['floor_us_per_event']:.2f} | {r['above_floor_us_per_event']:.2f} | {r['ratio']:.2f} |"
        )
    if args.json:
        args.json.write_text(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
