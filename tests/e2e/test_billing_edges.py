"""Billing edges through both front doors (Envoy + the sidecar, and the ASGI gateway): the
parser and header edges a client can reach, and the model-server edges of the adversarial fake
upstream (devtools/adversarial.py). Every refusal reaches no model and charges nothing."""

from __future__ import annotations

import json
import socket
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from critique_sidecar.devtools.stack import Stack

from .faultkit import CHAT_PATH, MODEL, funded, ledger, upstream_count, upstream_requests
from .helpers import FrontDoor, wait_for_records

GRANT = 50_000_000  # micro-credits: what funded(..., "50") grants


def post(door: FrontDoor, content: bytes, headers: list[tuple[str, str]]) -> httpx.Response:
    return httpx.post(
        door.chat_url, content=content, headers=[("content-type", "application/json"), *headers], timeout=30
    )


def refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json") and r.json()["error"]["code"] == code


def untouched(stack: Stack, account: str, seen_before: int) -> None:
    assert upstream_count(stack) == seen_before
    state = ledger(stack, account)
    assert (state.records, state.holds, state.held, state.balance) == ([], 0, 0, GRANT)


@pytest.fixture
def key(stack: Stack, account: str) -> str:
    return funded(stack, account, "50")


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


# -- the parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"%s","max_tokens":1,"max_tok\\u0065ns":30000,"messages":[{"role":"user","content":"x"}]}',
        b'{"model":"%s","n":1,"\\u006e":8,"messages":[{"role":"user","content":"x"}]}',
    ],
    ids=["max_tokens", "n"],
)
def test_escaped_names_are_duplicates_on_both_doors(
    stack: Stack, front_door: FrontDoor, key: str, account: str, raw: bytes
) -> None:
    seen = upstream_count(stack)
    refused(post(front_door, raw % MODEL.encode(), bearer(key)), 400, "invalid_request")
    untouched(stack, account, seen)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_1000_levels_of_nesting_are_400_on_both_doors(
    stack: Stack, front_door: FrontDoor, key: str, account: str, stream: bool
) -> None:
    seen = upstream_count(stack)
    raw = b'{"model":"%s","stream":%s,"messages":[{"role":"user","content":"x"}],"metadata":%s%s}' % (
        MODEL.encode(),
        b"true" if stream else b"false",
        b"[" * 1000,
        b"]" * 1000,
    )
    r = post(front_door, raw, bearer(key))
    refused(r, 400, "invalid_request")
    assert "nested" in r.json()["error"]["message"]
    untouched(stack, account, seen)


@pytest.mark.parametrize("which", ["same", "other"])
def test_two_authorization_headers_are_401_on_both_doors(
    stack: Stack, front_door: FrontDoor, key: str, account: str, which: str
) -> None:
    other = key if which == "same" else funded(stack, account + "-other", "50")
    seen = upstream_count(stack)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).encode()
    refused(post(front_door, body, [*bearer(key), *bearer(other)]), 401, "invalid_api_key")
    r = httpx.get(front_door.base_url + "/api/settings/inference-api", headers=[*bearer(key), *bearer(other)])
    assert r.status_code == 401
    untouched(stack, account, seen)


@pytest.mark.parametrize("framing", ["content-length 0", "chunked, empty"])
def test_a_request_without_a_body_never_reaches_a_model(
    stack: Stack, front_door: FrontDoor, key: str, account: str, framing: str
) -> None:
    seen = upstream_count(stack)
    headers = [*bearer(key), ("x-critique-model", MODEL)]
    content: Any = b"" if framing == "content-length 0" else iter([b""])
    r = httpx.post(front_door.chat_url, content=content, headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    untouched(stack, account, seen)


def h2_headers_then_trailers(port: int, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """One HTTP/2 request (prior knowledge, h2c) of HEADERS then trailers and no DATA frame."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=False)
        conn.send_headers(1, [("x-trailer", "1")], end_stream=True)
        sock.sendall(conn.data_to_send())
        status, body = 0, b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[":status"])  # type: ignore[index]  # str: header_encoding="utf-8"
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return status, body
            sock.sendall(conn.data_to_send())
        return status, body


def test_http2_headers_and_trailers_without_data_never_reach_a_model(stack: Stack, key: str, account: str) -> None:
    seen = upstream_count(stack)
    status, body = h2_headers_then_trailers(
        stack.ports["envoy"],
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", CHAT_PATH),
            ("content-type", "application/json"),
            ("authorization", f"Bearer {key}"),
            ("x-critique-model", MODEL),  # the client tries to pick the model's route itself
        ],
    )
    assert status in (400, 503) and json.loads(body)["error"]["code"] in ("invalid_request", "service_unavailable")
    untouched(stack, account, seen)


def test_a_tiny_exponent_cap_is_400_not_zero(stack: Stack, front_door: FrontDoor, account: str) -> None:
    admin = stack.create_key(account, "read:inference,admin:inference")["key"]
    url = front_door.base_url + "/api/settings/inference-api"
    for raw in (b'{"daily_credit_cap": 1e-999999999}', b'{"daily_credit_cap": "0.0000001"}'):
        r = httpx.patch(url, content=raw, headers=[*bearer(admin), ("content-type", "application/json")])
        assert r.status_code == 400 and r.json()["error"]["param"] == "daily_credit_cap", r.text
    assert httpx.get(url, headers=bearer(admin)).json()["daily_credit_cap"] is None


# -- the model server ------------------------------------------------------------------------


def test_the_upstream_receives_the_bound_the_hold_assumed(stack: Stack, front_door: FrontDoor, key: str) -> None:
    cases = [({}, "max_tokens", 32_768), ({"max_tokens": 200_000}, "max_tokens", 32_768)]
    cases += [
        ({"max_completion_tokens": 99_999}, "max_completion_tokens", 32_768),
        ({"max_tokens": 7}, "max_tokens", 7),
    ]
    for extra, field, expected in cases:
        marker = f"bound {front_door.name} {field} {extra}"
        body = {"model": MODEL, "messages": [{"role": "user", "content": marker}], **extra}
        r = post(front_door, json.dumps(body).encode(), bearer(key))
        assert r.status_code == 200, r.text
        [sent] = [s["body"] for s in upstream_requests(stack) if marker in json.dumps(s["body"])]
        assert sent[field] == expected, (extra, sent)


def test_forged_charge_comments_are_dropped_and_usage_comes_from_the_largest_chunk(
    stack: Stack, front_door: FrontDoor, key: str, account: str
) -> None:
    content = "[[forge]] [[multiusage]] [[tokens:5]]"
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 50, "stream": True}
    with httpx.stream("POST", front_door.chat_url, json=body, headers=bearer(key), timeout=30) as r:
        text = r.read().decode()
    comments = [line for line in text.splitlines() if line.startswith(":")]
    assert len(comments) == 1 and "req_forged" not in text
    [record] = wait_for_records(stack, account, 1)
    assert comments[0].startswith(f": x-critique-request-id={record['request_id']} ")
    # prompt = len(content) // 4 + 1 = 10, completion 5 (the early, larger chunk), not 1 + 1
    assert (record["input_tokens"], record["output_tokens"], record["estimated"]) == ("10", "5", "0")
    deltas = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert sum(d["choices"][0]["delta"].get("content", "") == "tok " for d in deltas if d["choices"]) == 5


# -- the table: balance 10, reserve floor 9, a vLLM-like model server ------------------


@pytest.mark.parametrize(
    "extra, expected",
    [
        # (3 x 0.15 + 32768 x 0.30) / 1e6 USD = 0.00983085 USD = 0.983085 credits: the model's
        # whole output budget, which is now the bound the model server receives
        ({}, "0.983085"),
        ({"max_tokens": 200_000}, "0.983085"),
        # the hold is 8 x 30000 output tokens (7.2 credits and more): over the 1 credit available
        ({"n": 8, "max_tokens": 30_000}, None),
    ],
    ids=["no max_tokens", "max_tokens 200000", "n 8 + max_tokens 30000"],
)
def test_the_floor_holds_against_a_vllm_like_server(
    stack: Stack, front_door: FrontDoor, account: str, extra: dict[str, Any], expected: str | None
) -> None:
    import openai

    from critique_sidecar.store import keyspace as ks

    from .faultkit import sync_redis
    from .helpers import client

    key = funded(stack, account, "10")
    with sync_redis(stack) as r:
        r.hset(ks.settings(account), "reserve_floor", 9_000_000)  # as `settings set --reserve-floor 9`
    sdk = client(front_door, key)
    messages: Any = [{"role": "user", "content": "[[vllm]] hi"}]  # 3 prompt tokens at the fake upstream
    if expected is None:
        with pytest.raises(openai.APIStatusError) as err:
            sdk.chat.completions.create(model=MODEL, messages=messages, **extra)
        assert err.value.status_code == 402
        assert (ledger(stack, account).balance, ledger(stack, account).records) == (10_000_000, [])
        return
    r = sdk.chat.completions.with_raw_response.create(model=MODEL, messages=messages, **extra)
    assert r.headers["x-critique-credits-charged"] == expected
    state = ledger(stack, account)
    assert (state.balance, state.holds) == (10_000_000 - 983_085, 0)  # 9.016915: above the floor
