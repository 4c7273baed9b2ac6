"""The two front doors side by side: the same requests through Envoy + the sidecar and through
the ASGI gateway give the same charges (headers, usage records, balances), the same error
statuses and bodies, and the same in-band SSE charge. Each door gets its own account set up
the same way, so the two ledgers can be compared record by record."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from critique_sidecar.core.scopes import MODELS_PATH, SETTINGS_PATH
from critique_sidecar.devtools.stack import FRONT_DOORS, Stack

from .helpers import FrontDoor, balance, front_door, funded_key, upstream_seen, usage_records, wait_for_records

MODEL = "deepseek/deepseek-v4-flash"
# What legitimately differs between two requests: ids, timings, who paid.
PER_REQUEST = {"request_id", "account", "key_id", "latency_ms", "ts_ms"}


@pytest.fixture
def doors(stack: Stack, asgi_gateway: str) -> list[FrontDoor]:
    return [front_door(stack, name) for name in FRONT_DOORS]


@pytest.fixture
def accounts(account: str) -> dict[str, str]:
    return {name: f"{account}-{name}" for name in FRONT_DOORS}


def chat(
    door: FrontDoor, key: str | None, body: dict[str, Any] | bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    h = {"content-type": "application/json", **(headers or {})}
    if key:
        h["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
    return httpx.post(door.chat_url, headers=h, content=content, timeout=30)


def comparable(record: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in record.items() if k not in PER_REQUEST}


def critique_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("x-critique-") and k != "x-critique-request-id"}


def error_view(r: httpx.Response) -> tuple[int, str, Any]:
    return r.status_code, r.headers.get("content-type", ""), r.json()


# -- charges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, headers",
    [({"model": MODEL, "messages": [{"role": "user", "content": "parity one"}], "max_tokens": 40}, {}),
     ({"messages": [{"role": "user", "content": "default model [[tokens:7]]"}]}, {}),
     ({"model": "tencent/hy3-preview", "messages": [{"role": "user", "content": "x" * 999}]}, {}),
     ({"model": "nvidia/nemotron-3-ultra-550b-a55b", "messages": [{"role": "user", "content": "promo"}]}, {}),
     ({"model": MODEL, "messages": [{"role": "user", "content": "no usage [[nousage]]"}]}, {}),
     ({"model": MODEL, "messages": [{"role": "user", "content": "opted in"}]}, {"X-Critique-DeepSeek-Training-Opt-In": "true"}),
     ({"model": MODEL, "messages": [{"role": "user", "content": "zipped [[forcegzip]]"}]}, {})],
)  # fmt: skip
def test_json_charges_are_identical(
    stack: Stack, doors: list[FrontDoor], accounts: dict[str, str], body: dict[str, Any], headers: dict[str, str]
) -> None:
    seen = {}
    for door in doors:
        key = funded_key(stack, accounts[door.name])
        r = chat(door, key, body, headers)
        assert r.status_code == 200, (door.name, r.text)
        [record] = usage_records(stack, accounts[door.name])
        assert r.headers["x-critique-request-id"] == record["request_id"]
        upstream_body = upstream_seen(stack)[-1]["body"]
        seen[door.name] = (
            critique_headers(r),
            comparable(record),
            balance(stack, accounts[door.name]),
            upstream_body,
            r.json().get("usage", None),
        )
    envoy, asgi = seen["envoy"], seen["asgi"]
    assert set(envoy[0]) == {"x-critique-credits-charged", "x-critique-estimated-usd"}
    assert envoy == asgi
    assert Decimal("10") - envoy[2] == Decimal(envoy[0]["x-critique-credits-charged"])


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("directive", ["", "[[nousage]]", "[[tokens:30]]"])
def test_sse_streams_and_charge_comments_are_identical(
    stack: Stack, doors: list[FrontDoor], accounts: dict[str, str], include_usage: bool, directive: str
) -> None:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"stream parity {directive}"}],
        "stream": True,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    seen = {}
    for door in doors:
        key = funded_key(stack, accounts[door.name])
        with httpx.stream(
            "POST", door.chat_url, headers={"authorization": f"Bearer {key}"}, json=body, timeout=30
        ) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert "content-length" not in r.headers
            raw = r.read().decode()
        [record] = usage_records(stack, accounts[door.name])
        comment = re.findall(r"^: x-critique-request-id=.*$", raw, re.M)
        assert comment and comment[0].startswith(f": x-critique-request-id={record['request_id']} ")
        # Normalise what differs per request (our request id, the upstream's ids and times).
        raw = raw.replace(record["request_id"], "req_X")
        raw = re.sub(r'"id":"chatcmpl-fake\d+"', '"id":"ID"', re.sub(r'"created":\d+', '"created":0', raw))
        seen[door.name] = (raw, comparable(record), balance(stack, accounts[door.name]))
    assert seen["envoy"] == seen["asgi"]
    raw = seen["envoy"][0]
    assert raw.endswith("data: [DONE]\n\n") and ('"usage":{' in raw) == (include_usage and directive != "[[nousage]]")
    assert ("estimated=true" in raw) == (directive == "[[nousage]]")


def test_cut_streams_are_charged_identically(stack: Stack, doors: list[FrontDoor], accounts: dict[str, str]) -> None:
    # Slow chunks, so the cut comes well after the response started at the client: an upstream
    # reset while Envoy still holds the response headers becomes a 502 instead (not this case).
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "[[slow:50]] [[cut]] [[tokens:10]]"}],
        "stream": True,
    }
    seen = {}
    for door in doors:
        key = funded_key(stack, accounts[door.name])
        with pytest.raises(httpx.HTTPError):  # the client sees the cut
            with httpx.stream(
                "POST", door.chat_url, headers={"authorization": f"Bearer {key}"}, json=body, timeout=30
            ) as r:
                r.read()
        [record] = wait_for_records(stack, accounts[door.name], 1)
        seen[door.name] = comparable(record)
    assert seen["envoy"] == seen["asgi"]
    assert seen["envoy"]["status"] == "interrupted" and seen["envoy"]["output_tokens"] == "5"


def test_upstream_errors_pass_through_identically_and_charge_nothing(
    stack: Stack, doors: list[FrontDoor], accounts: dict[str, str]
) -> None:
    seen = {}
    for door in doors:
        key = funded_key(stack, accounts[door.name])
        r = chat(door, key, {"model": MODEL, "messages": [{"role": "user", "content": "[[status:503]]"}]})
        [record] = usage_records(stack, accounts[door.name])
        seen[door.name] = (r.status_code, r.json(), comparable(record), balance(stack, accounts[door.name]))
    assert seen["envoy"] == seen["asgi"]
    assert seen["envoy"][0] == 503 and seen["envoy"][2]["credits"] == "0" and seen["envoy"][3] == Decimal("10")


# -- errors ----------------------------------------------------------------------------------------

Setup = Callable[[Stack, str], "str | None"]  # (stack, account) -> the key to send, if any


def _no_key(stack: Stack, account: str) -> str | None:
    return None


def _funded(stack: Stack, account: str) -> str | None:
    return funded_key(stack, account)


def _broke(stack: Stack, account: str) -> str | None:
    return funded_key(stack, account, "0")


def _read_only(stack: Stack, account: str) -> str | None:
    return funded_key(stack, account, scopes="read:inference")


def _revoked(stack: Stack, account: str) -> str | None:
    created = stack.create_key(account)
    stack.cli("keys", "revoke", created["key_id"])
    return str(created["key"])


def _disabled(stack: Stack, account: str) -> str | None:
    key = funded_key(stack, account)
    stack.cli("settings", "set", "--account", account, "--enabled", "false")
    return key


def _request_cap_spent(stack: Stack, account: str) -> str | None:
    key = funded_key(stack, account)
    stack.cli("settings", "set", "--account", account, "--daily-request-cap", "0")
    return key


def _floor(stack: Stack, account: str) -> str | None:
    key = funded_key(stack, account, "1")
    stack.cli("settings", "set", "--account", account, "--reserve-floor", "1")
    return key


# >>> limits: per-key controls and rate limits
def _limited_key(*flags: str) -> Setup:
    def setup(stack: Stack, account: str) -> str | None:
        created = json.loads(stack.cli("keys", "create", "--account", account, "--json", *flags))
        stack.cli("credits", "grant", "--account", account, "--credits", "10")
        return str(created["key"])

    return setup


_expired = _limited_key("--expires-at", "2020-01-01")
_other_model_only = _limited_key("--models", "tencent/hy3-preview")
_key_cap_spent = _limited_key("--daily-credit-cap", "0")
_tokens_too_few = _limited_key("--tpm", "10", "--rpm", "5")  # every request's bound is larger
# Refusals with Retry-After, and those the SDKs are told not to retry.
RETRY_AFTER = {"daily_request_cap_reached", "key_daily_credit_cap_reached"}
NO_RETRY = {"inference_disabled", "insufficient_credits", "daily_request_cap_reached",
            "key_daily_credit_cap_reached", "model_not_allowed", "rate_limit_exceeded"}  # fmt: skip
RATE_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")  # fmt: skip


def limit_headers(r: httpx.Response) -> dict[str, str]:
    """The retry and rate-limit headers (Retry-After by presence: its value counts down)."""
    out = {k: r.headers[k] for k in (*RATE_HEADERS, "x-should-retry") if k in r.headers}
    if "retry-after" in r.headers:
        out["retry-after"] = "present"
    return out


# <<< limits

OK = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize(
    "setup, body, headers, status, code",
    [pytest.param(_no_key, OK, {}, 401, "invalid_api_key", id="no-key"),
     pytest.param(_no_key, OK, {"authorization": "Bearer crt_" + "A" * 38}, 401, "invalid_api_key", id="bad-key"),
     pytest.param(_no_key, OK, {"authorization": "Basic Zm9vOmJhcg=="}, 401, "invalid_api_key", id="not-bearer"),
     pytest.param(_revoked, OK, {}, 401, "invalid_api_key", id="revoked"),
     pytest.param(_read_only, OK, {}, 403, "insufficient_scope", id="scope"),
     pytest.param(_disabled, OK, {}, 403, "inference_disabled", id="disabled"),
     pytest.param(_broke, OK, {}, 402, "insufficient_credits", id="no-credits"),
     pytest.param(_floor, OK, {}, 402, "insufficient_credits", id="reserve-floor"),
     pytest.param(_request_cap_spent, OK, {}, 429, "daily_request_cap_reached", id="request-cap"),
     pytest.param(_funded, {"model": "acme/nope", "messages": [{"role": "user", "content": "x"}]}, {}, 404, "model_not_found", id="model"),
     pytest.param(_funded, b"{not json", {}, 400, "invalid_request", id="bad-json"),
     pytest.param(_funded, b"", {}, 400, "invalid_request", id="empty-body"),
     pytest.param(_funded, b"[1]", {}, 400, "invalid_request", id="not-object"),
     pytest.param(_funded, {"model": MODEL}, {}, 400, "invalid_request", id="no-messages"),
     pytest.param(_funded, {**OK, "max_tokens": 0}, {}, 400, "invalid_request", id="max-tokens"),
     pytest.param(_funded, {**OK, "stream": "yes"}, {}, 400, "invalid_request", id="stream"),
     pytest.param(_funded, b"x" * (4 * 1024 * 1024 + 1), {}, 413, "request_too_large", id="too-large"),
     pytest.param(_no_key, b"x" * (4 * 1024 * 1024 + 1), {}, 413, "request_too_large", id="too-large-no-key"),
     pytest.param(_expired, OK, {}, 401, "invalid_api_key", id="key-expired"),
     pytest.param(_other_model_only, OK, {}, 403, "model_not_allowed", id="model-not-allowed"),
     pytest.param(_key_cap_spent, OK, {}, 429, "key_daily_credit_cap_reached", id="key-cap"),
     pytest.param(_tokens_too_few, OK, {}, 429, "rate_limit_exceeded", id="tpm-never-fits")],
)  # fmt: skip
def test_errors_are_identical(
    stack: Stack, doors: list[FrontDoor], accounts: dict[str, str],
    setup: Setup, body: dict[str, Any] | bytes, headers: dict[str, str], status: int, code: str,
) -> None:  # fmt: skip
    seen = {}
    for door in doors:
        key = setup(stack, accounts[door.name])
        r = chat(door, key, body, headers)
        seen[door.name] = (*error_view(r), limit_headers(r))
        retry = r.headers.get("retry-after")
        assert (retry is not None) == (code in RETRY_AFTER), door.name
        assert (r.headers.get("x-should-retry") == "false") == (code in NO_RETRY), door.name
        assert ("x-ratelimit-limit-tokens" in r.headers) == (code == "rate_limit_exceeded"), door.name
        assert usage_records(stack, accounts[door.name]) == []  # never charge a denied request
        assert '"held": "0.000000"' in stack.cli("credits", "show", "--account", accounts[door.name], "--json")
    assert seen["envoy"] == seen["asgi"]
    assert seen["envoy"][:2] == (status, "application/json") and seen["envoy"][2]["error"]["code"] == code


# >>> limits
@pytest.mark.parametrize("stream", [False, True])
def test_rate_limit_headers_are_identical(
    stack: Stack, doors: list[FrontDoor], accounts: dict[str, str], stream: bool
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "limited"}], "max_tokens": 30, "stream": stream}
    seen = {}
    for door in doors:
        key = _limited_key("--rpm", "20", "--tpm", "100000")(stack, accounts[door.name])
        r = chat(door, key, body)
        assert r.status_code == 200, r.text
        [record] = usage_records(stack, accounts[door.name])
        assert r.headers["x-request-id"] == r.headers["x-critique-request-id"] == record["request_id"]
        seen[door.name] = limit_headers(r)
    assert seen["envoy"] == seen["asgi"]
    assert (
        seen["envoy"]["x-ratelimit-limit-requests"] == "20" and seen["envoy"]["x-ratelimit-remaining-requests"] == "19"
    )
    assert seen["envoy"]["x-ratelimit-reset-tokens"] == "1m0s" and "x-should-retry" not in seen["envoy"]


# <<< limits


def test_models_settings_and_unknown_routes_answer_identically(
    stack: Stack, doors: list[FrontDoor], account: str
) -> None:
    key = funded_key(stack, account, "0", scopes="read:inference")
    seen = {}
    for door in doors:
        auth = {"authorization": f"Bearer {key}"}
        seen[door.name] = [
            (r.status_code, r.json())
            for r in (
                httpx.get(door.base_url + MODELS_PATH, headers=auth),
                httpx.get(door.base_url + MODELS_PATH),
                httpx.get(door.base_url + SETTINGS_PATH, headers=auth),
                httpx.patch(door.base_url + SETTINGS_PATH, headers=auth, json={"daily_request_cap": 1}),
                httpx.get(door.base_url + "/nope"),
                httpx.get(door.base_url + MODELS_PATH + "/"),
            )
        ]
    assert seen["envoy"] == seen["asgi"]
    assert [s for s, _ in seen["envoy"]] == [200, 401, 200, 403, 404, 404]


def test_unknown_route_content_type_is_json_on_both(stack: Stack, doors: list[FrontDoor]) -> None:
    assert [httpx.get(door.base_url + "/nope").headers.get("content-type") for door in doors] == [
        "application/json"
    ] * 2
