"""Bad input through the real Envoy: every request gets a clear answer in the JSON error shape,
quickly, reaches no upstream, places no hold and charges nothing.

- bodies over the limit (announced or streamed) -> 413 `request_too_large` from our own limit;
- deeply nested, huge, malformed or non-UTF-8 JSON; wrong types for model, messages,
  max_tokens, stream -> 400 `invalid_request` naming the field;
- JSON naming a billed field twice -> 400 naming it;
- duplicate Authorization headers, oversized or too many headers -> 401 / 431, never a hang;
- keys with the right prefix and a bad checksum -> 401 before any Redis lookup (counted with
  INFO commandstats, next to a well-formed unknown key that does cost one lookup);
- spoofed x-critique-* headers never reach the upstream and never change who is charged.

One stack for the module (its own Redis, so the command counts are this module's alone)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from critique_sidecar.core.keys import ALPHABET, generate_key
from critique_sidecar.devtools.stack import Stack

from .faultkit import CHAT_PATH, MODEL, body, funded, ledger, upstream_count, upstream_requests

LIMIT = 4 * 1024 * 1024  # EnvoyOptions.max_request_bytes
QUICK_S = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("bad-input"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def key(stack: Stack, account: str) -> str:
    return funded(stack, account, "50")


def send(stack: Stack, content: Any, key: str | None = None, headers: Any = None) -> tuple[httpx.Response, float]:
    h: list[tuple[str, str]] = [("content-type", "application/json")]
    if key is not None:
        h.append(("authorization", f"Bearer {key}"))
    h += list(headers.items() if isinstance(headers, dict) else headers or [])
    start = time.monotonic()
    r = httpx.post(stack.base_url + CHAT_PATH, content=content, headers=h, timeout=30)
    return r, time.monotonic() - start


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    e: dict[str, Any] = r.json()["error"]
    assert e["code"] == code and e["message"], e
    return e


def untouched(stack: Stack, account: str, seen_before: int) -> None:
    """Nothing went upstream, no hold, no record, the balance as granted."""
    assert upstream_count(stack) == seen_before
    state = ledger(stack, account)
    assert state.records == [] and state.holds == 0 and state.held == 0 and state.balance == 50_000_000


# -- size ------------------------------------------------------------------------------------


def test_body_over_the_limit_is_413_at_once(stack: Stack, key: str, account: str) -> None:
    seen = upstream_count(stack)
    over = json.dumps(body("x" * LIMIT)).encode()
    r, elapsed = send(stack, over, key)
    error(r, 413, "request_too_large")
    assert elapsed < QUICK_S

    def chunks() -> Iterator[bytes]:  # no Content-Length: the buffer filter counts the bytes
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    r, elapsed = send(stack, chunks(), key)
    error(r, 413, "request_too_large")
    assert elapsed < QUICK_S
    untouched(stack, account, seen)


def test_a_body_announced_too_large_is_refused_before_it_is_sent(stack: Stack, key: str) -> None:
    """A client that announces 10 MB and then trickles bytes gets its 413 from the headers,
    not after the idle timeout."""
    with socket.create_connection(("127.0.0.1", stack.ports["envoy"]), timeout=QUICK_S) as sock:
        sock.sendall(
            f"POST {CHAT_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f'Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{"model":'.encode()
        )
        reply = sock.recv(4096)  # socket.timeout (a failure) if Envoy waited for the body
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(payload)["error"]["code"] == "request_too_large"


def test_a_body_just_under_the_limit_is_metered_not_refused(stack: Stack, account: str) -> None:
    """The 413 is our limit, not an accident: a body just under it reaches metering (and this
    10-credit account cannot cover its maximum cost)."""
    key = funded(stack, account, "10")
    under = json.dumps(body("x" * (LIMIT - 300))).encode()
    assert len(under) <= LIMIT
    r, _ = send(stack, under, key)
    error(r, 402, "insufficient_credits")


def test_huge_valid_json_within_the_limit_is_served_and_charged(stack: Stack, account: str) -> None:
    key = funded(stack, account, "1000")
    payload = json.dumps(body("y" * (3 * 1024 * 1024), max_tokens=5)).encode()
    r, elapsed = send(stack, payload, key)
    assert r.status_code == 200, r.text
    assert elapsed < 10
    state = ledger(stack, account)
    [record] = state.records
    assert int(record["input_tokens"]) > 700_000 and state.holds == 0
    assert 1_000_000_000 - state.balance == int(record["credits"])


# -- JSON ------------------------------------------------------------------------------------

NESTED = b'{"model":"%s","messages":[{"role":"user","content":"x"}],"x":%s1%s}' % (
    MODEL.encode(),
    b"[" * 100_000,
    b"]" * 100_000,
)
BAD_BODIES = {
    "deeply nested": NESTED,
    "nested in a message": b'{"model":"%s","messages":[{"role":"user","content":%s"x"%s}]}'
    % (MODEL.encode(), b"[" * 5000, b"]" * 5000),
    "not json": b"hello",
    "truncated": b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"us',
    "json array": b"[1, 2]",
    "json string": b'"hi"',
    "empty": b"",
    "invalid utf-8": b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"\xff\xfe"}]}',
    "lone surrogate": b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"\\ud800"}]}',
    "NaN": b'{"model":"' + MODEL.encode() + b'","messages":[{"role":"user","content":"x"}],"max_tokens":NaN}',
    "trailing garbage": json.dumps(body()).encode() + b"}{",
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_malformed_json_is_400(stack: Stack, key: str, account: str, name: str) -> None:
    seen = upstream_count(stack)
    r, elapsed = send(stack, BAD_BODIES[name], key)
    error(r, 400, "invalid_request")
    assert elapsed < QUICK_S
    untouched(stack, account, seen)


WRONG_TYPES = [
    ("model", 123), ("model", ["a"]), ("model", {"id": MODEL}), ("model", True),
    ("messages", "hello"), ("messages", []), ("messages", None), ("messages", [1]), ("messages", {"role": "user"}),
    ("max_tokens", "10"), ("max_tokens", -1), ("max_tokens", 0), ("max_tokens", 1.5), ("max_tokens", True), ("max_tokens", [5]),
    ("max_completion_tokens", "5"),
    ("stream", "yes"), ("stream", 1), ("stream", {}),
    ("stream_options", "x"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES, ids=[f"{f}={v!r}" for f, v in WRONG_TYPES])
def test_wrong_types_are_400_naming_the_field(stack: Stack, key: str, account: str, field: str, value: Any) -> None:
    seen = upstream_count(stack)
    payload = {**body(), field: value}
    r, _ = send(stack, json.dumps(payload).encode(), key)
    assert error(r, 400, "invalid_request")["param"] == field
    untouched(stack, account, seen)


def test_unknown_model_is_404(stack: Stack, key: str, account: str) -> None:
    seen = upstream_count(stack)
    r, _ = send(stack, json.dumps(body(model="acme/no-such-model")).encode(), key)
    error(r, 404, "model_not_found")
    untouched(stack, account, seen)


def test_duplicate_metered_json_keys_are_refused(stack: Stack, key: str, account: str) -> None:
    """JSON naming a billed field twice: we would bill the last value while a model server
    reading the first could serve another model or more tokens, so it is refused."""
    seen = upstream_count(stack)
    raw = b'{"model":"acme/no-such-model","model":"%s","messages":[{"role":"user","content":"dup"}]}' % MODEL.encode()
    r, _ = send(stack, raw, key)
    assert error(r, 400, "invalid_request")["param"] == "model"
    raw = b'{"model":"%s","messages":[{"role":"user","content":"dup"}],"max_tokens":7,"max_tokens":3}' % MODEL.encode()
    r, _ = send(stack, raw, key)
    assert error(r, 400, "invalid_request")["param"] == "max_tokens"
    untouched(stack, account, seen)


# -- headers ---------------------------------------------------------------------------------


def test_two_authorization_headers_are_401_and_charge_nobody(stack: Stack, key: str, account: str) -> None:
    other_account = account + "-other"
    other = funded(stack, other_account, "50")
    seen = upstream_count(stack)
    for pair in ((key, other), (other, key), (key, key)):
        r, elapsed = send(stack, json.dumps(body()).encode(), headers=[("authorization", f"Bearer {k}") for k in pair])
        error(r, 401, "invalid_api_key")
        assert elapsed < QUICK_S
    untouched(stack, account, seen)
    untouched(stack, other_account, seen)


@pytest.mark.parametrize(
    "headers",
    [{"x-big": "a" * 61 * 1024}, {f"x-h{i}": "v" for i in range(150)}],
    ids=["one 61 KB header", "150 headers"],
)
def test_absurd_headers_get_431_json_not_an_empty_reply(
    stack: Stack, key: str, account: str, headers: dict[str, str]
) -> None:
    seen = upstream_count(stack)
    r, elapsed = send(stack, json.dumps(body()).encode(), key, headers)
    error(r, 431, "invalid_request")
    assert elapsed < QUICK_S
    untouched(stack, account, seen)


def test_a_malformed_http_request_gets_an_answer(stack: Stack) -> None:
    """Envoy's own 400 for a broken request (here a space in a header name) reaches the
    client, not an empty reply (ext_proc must not hold a reply for a request with no route)."""
    with socket.create_connection(("127.0.0.1", stack.ports["envoy"]), timeout=QUICK_S) as sock:
        sock.sendall(f"POST {CHAT_PATH} HTTP/1.1\r\nHost: x\r\nBad Header: v\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize(
    "authorization",
    [
        b"Bearer crt_" + b"A" * 50_000,
        "Bearer crt_\u00e9\u00e9".encode(),
        b"Basic dXNlcjpwYXNz",
        b"Bearer",
        b"crt_only",
        b"Bearer crt_ crt_",
    ],
    ids=["50 KB key", "non-ascii", "basic auth", "no token", "no scheme", "two tokens"],
)
def test_absurd_authorization_is_401(stack: Stack, account: str, authorization: bytes) -> None:
    seen = upstream_count(stack)
    r, elapsed = send(stack, json.dumps(body()).encode(), headers=[(b"authorization", authorization)])
    error(r, 401, "invalid_api_key")
    assert elapsed < QUICK_S
    assert upstream_count(stack) == seen


def _key_lookups(stack: Stack) -> int:
    """HGETALL calls so far (a key lookup is one HGETALL of crt:key:<hash>)."""
    with redis.Redis.from_url(str(stack.redis_url)) as r:
        return int(r.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


def _bad_checksum(good: str) -> str:
    last = good[-1]
    return good[:-1] + ALPHABET[(ALPHABET.index(last) + 1) % len(ALPHABET)]


def test_bad_checksum_keys_are_refused_before_any_redis_lookup(stack: Stack, key: str, account: str) -> None:
    seen = upstream_count(stack)
    forged = [_bad_checksum(generate_key()) for _ in range(5)] + [_bad_checksum(key)]
    before = _key_lookups(stack)
    for k in forged:
        error(send(stack, json.dumps(body()).encode(), k)[0], 401, "invalid_api_key")
    assert _key_lookups(stack) == before  # not one lookup for six forged keys

    # The counter does see lookups: a well-formed key nobody issued costs exactly one.
    unknown = generate_key()
    error(send(stack, json.dumps(body()).encode(), unknown)[0], 401, "invalid_api_key")
    assert _key_lookups(stack) == before + 1
    untouched(stack, account, seen)


# -- spoofing --------------------------------------------------------------------------------

SPOOFED = {
    "x-critique-model": "tencent/hy3-preview",
    "x-critique-account": "victim",
    "x-critique-key-id": "key_victim",
    "x-critique-request-id": "req_spoofed",
    "x-critique-credits-charged": "0.000000",
    "x-critique-estimated-usd": "0",
    "x-critique-identity": "victim",
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_spoofed_identity_headers_never_reach_the_upstream_nor_change_the_charge(
    stack: Stack, key: str, account: str, stream: bool
) -> None:
    victim = account + "-victim"
    victim_key = funded(stack, victim, "50")
    spoofed = {**SPOOFED, "x-critique-account": victim, "x-critique-key": victim_key}
    r, _ = send(stack, json.dumps(body("spoof me", stream=stream)).encode(), key, spoofed)
    assert r.status_code == 200, r.text

    seen = upstream_requests(stack)[-1]
    sent_headers = {k.lower() for k in seen["headers"]}
    assert not [h for h in sent_headers if h.startswith("x-critique-")]
    assert seen["headers"]["authorization"] == f"Bearer {stack.upstream_key}"  # the operator's, not the client's
    assert seen["body"]["model"] == MODEL  # routed by the body, not by a header

    [record] = ledger(stack, account).records  # the key's own account pays
    assert ledger(stack, victim).records == [] and ledger(stack, victim).balance == 50_000_000
    assert record["request_id"] == r.headers["x-critique-request-id"] != "req_spoofed"
    assert record["model"] == MODEL and int(record["credits"]) > 0
    if not stream:
        assert r.headers["x-critique-credits-charged"] == f"{int(record['credits']) / 1_000_000:.6f}"
    else:
        assert f"x-critique-request-id={record['request_id']}" in r.text


def test_spoofed_headers_on_the_models_route_do_not_grant_access(stack: Stack) -> None:
    r = httpx.get(
        stack.base_url + "/api/v1/models", headers={**SPOOFED, "x-critique-scopes": "read:inference"}, timeout=10
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_no_request_in_this_module_left_a_hold(stack: Stack) -> None:
    with redis.Redis.from_url(str(stack.redis_url)) as r:
        assert [k for k in r.scan_iter("crt:*:holds") if r.hlen(k)] == []
        assert [k for k in r.scan_iter("crt:*:acct") if int(r.hget(k, "held") or 0)] == []
