"""`stream: true` through both front doors (the real Envoy, the ASGI gateway): incremental delivery,
exact charges, cut streams."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from critique_sidecar.devtools.fake_upstream import prompt_tokens
from critique_sidecar.devtools.stack import Stack

from .helpers import (
    FrontDoor,
    balance,
    client,
    expected_charge,
    funded_key,
    upstream_seen,
    usage_records,
    wait_for_records,
)

MODEL = "deepseek/deepseek-v4-flash"


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _sse(door: FrontDoor, key: str, body: dict[str, object]) -> bytes:
    with httpx.stream("POST", door.chat_url, headers={"authorization": f"Bearer {key}"}, json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return r.read()


def test_sdk_parses_stream_and_usage_chunk_is_hidden(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    msgs = _messages("stream me please")
    chunks = list(client(front_door, key).chat.completions.create(model=MODEL, messages=msgs, stream=True))  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok " * 12
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert upstream_seen(stack)[-1]["body"]["stream_options"] == {"include_usage": True}  # but we did

    expected, usd = expected_charge(MODEL, prompt_tokens({"messages": msgs}), 12)
    [record] = usage_records(stack, account)
    assert record["credits"] == str(int(Decimal(expected) * 1_000_000))
    assert record["usd"] == usd and record["estimated"] == "0" and record["status"] == "ok"
    assert Decimal("10") - balance(stack, account) == Decimal(expected)


def test_usage_chunk_shown_when_client_asked_and_charge_comment_in_band(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    key = funded_key(stack, account)
    msgs = _messages("with usage")
    stream = client(front_door, key).chat.completions.create(
        model=MODEL,
        messages=msgs,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []

    raw = _sse(front_door, key, {"model": MODEL, "messages": msgs, "stream": True})
    expected, usd = expected_charge(MODEL, prompt_tokens({"messages": msgs}), 12)
    events = raw.split(b"\n\n")
    # The charge is one comment line in the same block as [DONE]: no blank line of its own.
    assert events[-1] == b""
    comment, done = events[-2].decode().split("\n")
    assert done == "data: [DONE]" and comment.startswith(": x-critique-request-id=req_")
    assert f"x-critique-credits-charged={expected}" in comment and f"x-critique-estimated-usd={usd}" in comment
    assert b'"usage":{' not in raw  # hidden again for the client that did not ask


def test_chunks_arrive_before_the_upstream_finishes(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    start = time.monotonic()
    arrivals = []
    stream = client(front_door, key).chat.completions.create(
        model=MODEL,
        messages=_messages("[[slow:300]] [[tokens:6]]"),
        stream=True,  # type: ignore[arg-type]
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 6
    # The upstream spends 300 ms before each token: a buffering gateway would deliver all six
    # at the end; we must deliver the first well before the last.
    assert arrivals[-1] - arrivals[0] > 1.0


def test_usage_on_the_last_text_chunk_is_metered_and_the_text_delivered(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    """Some servers send usage on the last content chunk, not on a `choices: []` chunk of its own."""
    key = funded_key(stack, account)
    msgs = _messages("[[usagewithtext]]")  # 17 characters: 17 // 4 + 1 = 5 prompt tokens
    chunks = list(client(front_door, key).chat.completions.create(model=MODEL, messages=msgs, stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok " * 12
    # By hand: deepseek 0.15 / 0.30 USD per million tokens = 15 / 30 micro-credits a token.
    [record] = usage_records(stack, account)
    assert (record["credits"], record["estimated"], record["output_tokens"]) == ("435", "0", "12")  # 5*15 + 12*30
    assert Decimal("10") - balance(stack, account) == Decimal("0.000435")


def test_stream_without_usage_is_estimated_and_settled_once(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    raw = _sse(front_door, key, {"model": MODEL, "messages": _messages("[[nousage]]"), "stream": True})
    assert b"estimated=true" in raw and raw.endswith(b"data: [DONE]\n\n")
    [record] = usage_records(stack, account)
    assert record["status"] == "estimated" and record["estimated"] == "1"
    assert int(record["output_tokens"]) == 12  # 48 bytes delivered / 4
    assert Decimal("10") - balance(stack, account) == Decimal(record["credits"]) / 1_000_000


def test_cut_stream_is_settled_once_by_estimate(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        # Slow chunks: the response has visibly started (headers and tokens delivered) before the cut.
        list(
            client(front_door, key).chat.completions.create(
                model=MODEL, messages=_messages("[[cut]] [[tokens:10]] [[slow:40]]"), stream=True
            )
        )  # type: ignore[arg-type]
    [record] = wait_for_records(stack, account, 1)
    assert record["status"] == "interrupted" and record["estimated"] == "1"
    assert int(record["output_tokens"]) == 5  # five 4-byte tokens were delivered before the cut
    assert '"held": "0.000000"' in stack.cli("credits", "show", "--account", account, "--json")


def test_client_disconnect_is_settled_once(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    body = {"model": MODEL, "messages": _messages("[[slow:100]] [[tokens:200]]"), "stream": True}
    with httpx.stream("POST", front_door.chat_url, headers={"authorization": f"Bearer {key}"}, json=body) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few events, then hang up
        assert any('"content":"tok "' in line for line in got)
    [record] = wait_for_records(stack, account, 1)
    assert record["status"] == "interrupted" and record["estimated"] == "1"
    assert 1 <= int(record["output_tokens"]) < 200
    assert '"held": "0.000000"' in stack.cli("credits", "show", "--account", account, "--json")
    assert len(usage_records(stack, account)) == 1


@pytest.mark.parametrize("directive", ["[[gzip]]", "[[forcegzip]]"])
def test_compressed_upstream_responses_are_metered(
    stack: Stack, front_door: FrontDoor, account: str, directive: str
) -> None:
    key = funded_key(stack, account)
    msgs = _messages(f"compress {directive}")
    r = httpx.post(
        front_door.chat_url,
        headers={"authorization": f"Bearer {key}", "accept-encoding": "gzip"},
        json={"model": MODEL, "messages": msgs},
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 12  # httpx decodes gzip
    assert "accept-encoding" not in upstream_seen(stack)[-1]["headers"]  # upstream asked not to compress
    assert r.headers.get("content-encoding") == ("gzip" if directive == "[[forcegzip]]" else None)
    expected, _ = expected_charge(MODEL, prompt_tokens({"messages": msgs}), 12)
    assert r.headers["x-critique-credits-charged"] == expected
    [record] = usage_records(stack, account)
    assert record["estimated"] == "0"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_long_stream_keeps_sidecar_memory_flat(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account, "100")
    pid = stack.procs[front_door.process].pid  # the process that meters: the sidecar or the ASGI gateway

    def stream(tokens: int) -> int:
        # Paced like a (very fast) model: 64 KiB every millisecond. An upstream that bursts more
        # than Envoy's stream buffer (4 MiB) before the sidecar answers the response-headers
        # message gets Envoy's response_payload_too_large instead (docs/failure-modes.md).
        body = {
            "model": MODEL,
            "messages": _messages(f"[[bigchunk:65536]] [[tokens:{tokens}]] [[slow:1]]"),
            "stream": True,
        }
        total = 0
        url = front_door.chat_url
        with httpx.stream("POST", url, headers={"authorization": f"Bearer {key}"}, json=body, timeout=120) as r:
            assert r.status_code == 200, r.read()
            for part in r.iter_bytes():
                total += len(part)
        return total

    # Warm up with a 30 MiB stream: allocator pools, gRPC buffers and the largest pieces Envoy
    # hands over (up to the cluster's 2 MiB buffer when the sidecar lags) exist before measuring.
    stream(480)
    before = _rss_kb(pid)
    total = stream(960)
    after = _rss_kb(pid)
    assert total > 60 * 1024 * 1024  # tens of MB went through
    # Bounded per stream: twice the data must not cost more memory (app.fix_malloc_mmap_threshold).
    assert after - before < 12 * 1024, f"RSS grew {after - before} KiB over a {total >> 20} MiB stream"
    record = usage_records(stack, account)[-1]
    assert record["output_tokens"] == "960" and record["estimated"] == "0"
