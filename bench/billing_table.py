"""What the meter bills against what the client received, for the streams and bodies where
meters lose money: a vLLM-like model server (the fake's [[vllm]] and framing directives), model
deepseek/deepseek-v4-flash, both front doors. Prints one Markdown table.

    .venv/bin/python bench/billing_table.py

Each row: the case, the door, the output tokens the client received (its SDK's decoder over
what it read before hanging up), the output tokens billed, the status and credits charged."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from openai._streaming import SSEDecoder

from critique_sidecar.devtools.stack import FRONT_DOORS, Stack, wait_until
from critique_sidecar.store import keyspace as ks

MODEL = "deepseek/deepseek-v4-flash"


def stream(url: str, key: str, body: dict[str, Any], hang_up_at: int | None) -> int:
    """Text deltas the client read (hanging up once it read `hang_up_at`)."""
    got = 0
    with httpx.stream("POST", url, json=body, headers={"authorization": f"Bearer {key}"}, timeout=120) as r:
        for event in SSEDecoder().iter_bytes(r.iter_raw()):  # one decoder over the whole stream
            if event.data.startswith("{"):
                choices = json.loads(event.data).get("choices", [])
                got += sum(1 for c in choices if (c.get("delta") or {}).get("content"))
            if hang_up_at is not None and got >= hang_up_at:
                break
    return got


def record(stack: Stack, account: str) -> dict[str, str]:
    import redis

    with redis.Redis.from_url(str(stack.redis_url), decode_responses=True) as r:
        wait_until(lambda: r.xlen(ks.usage_stream(account)) > 0, "a usage record", timeout=30)
        return r.xrange(ks.usage_stream(account))[-1][1]


CASES: list[tuple[str, dict[str, Any], int | None]] = [
    ("n: 8, continuous_usage_stats, hang-up near the end", {"messages": [{"role": "user", "content": "[[vllm]] [[tokens:500]] [[slow:2]]"}], "n": 8, "max_tokens": 500, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}, 3_992),
    ("same, hang-up earlier", {"messages": [{"role": "user", "content": "[[vllm]] [[tokens:500]] [[slow:2]]"}], "n": 8, "max_tokens": 500, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}, 900),
    ("`\\n\\r\\n` event ends, whole stream", {"messages": [{"role": "user", "content": "[[framing:1]] [[tokens:5000]]"}], "max_tokens": 5000, "stream": True}, None),
    ("CR-only lines with `id:`, whole stream", {"messages": [{"role": "user", "content": "[[framing:2]] [[tokens:5000]]"}], "max_tokens": 5000, "stream": True}, None),
    ("one 2-byte token per event, hang-up before usage", {"messages": [{"role": "user", "content": "[[dense]] [[tokens:2000]] [[slow:1]]"}], "max_tokens": 2000, "stream": True}, 1_990),
]  # fmt: skip
JSON_CASE = {"messages": [{"role": "user", "content": "[[vllm]] [[tokens:700]]"}], "n": 8, "max_tokens": 700,
             "logprobs": True, "top_logprobs": 20}  # fmt: skip


def main() -> int:
    rows = [
        "| case | door | delivered to the client | billed output tokens | status | credits |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), front_doors=FRONT_DOORS)
        try:
            stack.start()
            n = 0
            for door in FRONT_DOORS:
                url = stack.url(door) + "/api/v1/chat/completions"
                for name, body, hang_up in CASES:
                    n += 1
                    account = f"table-{n}"
                    key = stack.create_key(account)["key"]
                    stack.cli("credits", "grant", "--account", account, "--credits", "100")
                    got = stream(url, key, {"model": MODEL, **body}, hang_up)
                    r = record(stack, account)
                    rows.append(
                        f"| {name} | {door} | {got:,} | {int(r['output_tokens']):,} | {r['status']} | {int(r['credits']) / 1e6:.6f} |"
                    )
                n += 1
                account = f"table-{n}"
                key = stack.create_key(account)["key"]
                stack.cli("credits", "grant", "--account", account, "--credits", "100")
                resp = httpx.post(
                    url, json={"model": MODEL, **JSON_CASE}, headers={"authorization": f"Bearer {key}"}, timeout=120
                )
                r = record(stack, account)
                delivered = f"{resp.status_code}, {len(resp.content) / 1e6:.2f} MB"
                rows.append(
                    f"| JSON, n: 8, top_logprobs: 20 | {door} | {delivered} | {int(r['output_tokens']):,} | {r['status']} | {int(r['credits']) / 1e6:.6f} |"
                )
        finally:
            stack.stop()
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
