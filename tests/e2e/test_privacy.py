"""Payloads are kept only for opted-in requests, and then only in the capture sink."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import httpx
import openai
import pytest
import redis

from critique_sidecar.devtools.fake_upstream import prompt_tokens
from critique_sidecar.devtools.stack import Stack
from critique_sidecar.store import keyspace

from .helpers import client, expected_charge, funded_key, usage_records, wait_for_records

DEEPSEEK = "deepseek/deepseek-v4-flash"
OPT_IN = {"X-Critique-DeepSeek-Training-Opt-In": "true"}


def _everything_in_redis(stack: Stack) -> bytes:
    """Every key and every value of every type, as one blob to search."""
    out = bytearray()
    with redis.Redis.from_url(str(stack.redis_url)) as r:
        for key in r.scan_iter(count=1000):
            out += key
            kind = r.type(key)
            if kind == b"string":
                out += r.get(key) or b""
            elif kind == b"hash":
                for k, v in r.hgetall(key).items():
                    out += k + v
            elif kind == b"set":
                out += b"".join(r.smembers(key))
            elif kind == b"zset":
                out += b"".join(m for m, _ in r.zrange(key, 0, -1, withscores=True))
            elif kind == b"list":
                out += b"".join(r.lrange(key, 0, -1))
            elif kind == b"stream":
                for _, fields in r.xrange(key):
                    for k, v in fields.items():
                        out += k + v
    return bytes(out)


def _everything_on_disk(stack: Stack) -> bytes:
    """Every log the sidecar and Envoy wrote, and the journals."""
    return b"".join(p.read_bytes() for p in stack.workdir.iterdir() if p.is_file() and p.name != "upstream.log")


def test_canary_in_non_opted_requests_is_kept_nowhere(stack: Stack, account: str) -> None:
    canary = "CANARY-" + uuid.uuid4().hex
    key = funded_key(stack, account)
    c = client(stack, key)
    msgs = [{"role": "user", "content": f"secret {canary}"}]
    c.chat.completions.create(model=DEEPSEEK, messages=msgs)  # type: ignore[arg-type]
    list(c.chat.completions.create(model=DEEPSEEK, messages=msgs, stream=True))  # type: ignore[arg-type]
    c.chat.completions.create(model="tencent/hy3-preview", messages=msgs, extra_headers=OPT_IN)  # type: ignore[arg-type]  # no opt-in tier
    with pytest.raises(openai.InternalServerError):  # failing upstream
        c.chat.completions.create(
            model=DEEPSEEK, messages=[{"role": "user", "content": f"{canary} [[status:500]]"}], extra_headers=OPT_IN
        )  # type: ignore[arg-type]
    with pytest.raises((openai.APIError, httpx.HTTPError)):  # cut stream, opted in but not completed
        list(
            c.chat.completions.create(
                model=DEEPSEEK,
                messages=[{"role": "user", "content": f"{canary} [[cut]]"}],
                stream=True,
                extra_headers=OPT_IN,
            )
        )  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):  # denied
        c.chat.completions.create(model="acme/none", messages=msgs)  # type: ignore[arg-type]
    r = httpx.post(
        f"{stack.base_url}/api/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        content=f'{{"messages": "{canary}"}}',
    )
    assert r.status_code == 400 and canary not in r.text  # error messages do not echo payloads
    wait_for_records(stack, account, 5)  # the cut stream settles when Envoy closes its stream

    assert canary.encode() not in _everything_in_redis(stack)
    assert canary.encode() not in _everything_on_disk(stack)
    with redis.Redis.from_url(str(stack.redis_url)) as rr:
        assert rr.xlen(keyspace.capture_stream(account)) == 0


def test_opted_in_requests_are_captured_once_complete_with_the_charge(stack: Stack, account: str) -> None:
    canary = "OPTED-" + uuid.uuid4().hex
    key = funded_key(stack, account)
    c = client(stack, key)
    msgs = [{"role": "user", "content": f"train on this {canary}"}]
    raw = c.chat.completions.with_raw_response.create(model=DEEPSEEK, messages=msgs, extra_headers=OPT_IN)  # type: ignore[arg-type]
    stream_msgs = [{"role": "user", "content": f"stream {canary}"}]
    chunks = list(c.chat.completions.create(model=DEEPSEEK, messages=stream_msgs, stream=True, extra_headers=OPT_IN))  # type: ignore[arg-type]
    streamed_text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

    with redis.Redis.from_url(str(stack.redis_url)) as r:
        captured = [json.loads(f[b"record"]) for _, f in r.xrange(keyspace.capture_stream(account))]
    assert len(captured) == 2
    by_id = {rec["request_id"]: rec for rec in usage_records(stack, account)}
    assert len({cap["request_id"] for cap in captured}) == 2

    json_cap, stream_cap = captured
    assert json_cap["messages"] == msgs and json_cap["completion"] == raw.parse().choices[0].message.content
    assert stream_cap["messages"] == stream_msgs and stream_cap["completion"] == streamed_text == "tok " * 12
    for cap, m in ((json_cap, msgs), (stream_cap, stream_msgs)):
        credits, usd = expected_charge(DEEPSEEK, prompt_tokens({"messages": m}), 12, opt_in=True)
        assert cap["usd"] == usd and cap["credits"] == int(Decimal(credits) * 1_000_000)
        record = by_id[cap["request_id"]]
        assert record["opt_in"] == "1" and record["credits"] == str(cap["credits"])
        assert canary not in json.dumps(record)
    assert (
        raw.headers["x-critique-credits-charged"]
        == expected_charge(DEEPSEEK, prompt_tokens({"messages": msgs}), 12, opt_in=True)[0]
    )
