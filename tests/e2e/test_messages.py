"""Anthropic's Messages API through both front doors with the official anthropic SDK (base_url
<host>/api, the key in x-api-key as the SDK sends it). Charges written by hand, cache reads and
writes included: at the input price with the default catalog, at their own prices with a
catalog that names them; the balance moves by exactly the sum. The SDK's own exception classes on
the product's refusals; the key never reaches the model server, anthropic-version and
anthropic-beta do."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import anthropic
import httpx
import pytest

from critique_sidecar.devtools.stack import FRONT_DOORS, REPO, Stack

from .helpers import FrontDoor, balance, expected_charge, front_door, funded_key, upstream_seen, usage_records

MODEL = "deepseek/deepseek-v4-flash"


def sdk(door: FrontDoor, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=door.base_url + "/api", max_retries=0, timeout=60)


def input_total(usage: anthropic.types.Usage) -> int:
    """Anthropic's input_tokens leaves the prompt cache out: the input is all three."""
    return usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)


def test_messages_create_is_charged_with_cache_reads_and_writes_at_the_input_price(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    key = funded_key(stack, account)
    before = balance(stack, account)
    raw = sdk(front_door, key).messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "[[tokens:12]] [[cached:300]] [[cachewrite:40]] " + "w" * 2000}],
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == "tok " * 12
    usage = message.usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (300, 40)
    # the default catalog names no cache prices: cache tokens cost the input price
    credits, usd = expected_charge(MODEL, input_total(usage), usage.output_tokens)
    assert (raw.headers["x-critique-credits-charged"], raw.headers["x-critique-estimated-usd"]) == (credits, usd)
    assert before - balance(stack, account) == Decimal(credits)
    [record] = usage_records(stack, account)
    assert record["endpoint"] == "messages"
    assert (record["input_tokens"], record["cached_input_tokens"], record["cache_write_5m_tokens"]) == (
        str(input_total(usage)), "300", "40")  # fmt: skip


def test_messages_stream_is_charged_from_message_start_and_message_delta(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    key = funded_key(stack, account)
    before = balance(stack, account)
    with sdk(front_door, key).messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "[[tokens:20]] [[thinking]] [[cached:50]] Stream it."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok " * 20
    credits, _ = expected_charge(MODEL, input_total(final.usage), final.usage.output_tokens)
    assert final.usage.output_tokens == 40  # thinking is output
    assert before - balance(stack, account) == Decimal(credits)
    [record] = usage_records(stack, account)
    assert record["status"] == "ok" and record["estimated"] == "0"


def test_a_stream_cut_before_message_delta_settles_once_by_the_estimate(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    key = funded_key(stack, account)
    with pytest.raises(anthropic.APIError):
        with sdk(front_door, key).messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "[[tokens:40]] [[cut]] go"}]
        ) as stream:
            "".join(stream.text_stream)
    from .helpers import wait_for_records

    [record] = wait_for_records(stack, account, 1)
    assert record["status"] == "interrupted" and record["estimated"] == "1"
    assert 20 <= int(record["output_tokens"]) <= 64  # text deltas delivered, never above the bound


def test_the_sdk_raises_its_own_classes_on_the_products_refusals(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.AuthenticationError) as auth:
        sdk(front_door, "crt_not_a_key").messages.create(model=MODEL, max_tokens=5, messages=messages)  # type: ignore[arg-type]
    assert auth.value.body["error"]["code"] == "invalid_api_key"  # type: ignore[index]
    broke = funded_key(stack, account + "-broke", "0")
    with pytest.raises(anthropic.APIStatusError) as paid:
        sdk(front_door, broke).messages.create(model=MODEL, max_tokens=5, messages=messages)  # type: ignore[arg-type]
    assert paid.value.status_code == 402
    assert paid.value.body["error"] == {  # type: ignore[index]
        "type": "billing_error", "message": paid.value.body["error"]["message"], "code": "insufficient_credits"}  # type: ignore[index]  # fmt: skip
    key = stack.create_key(account, "read:inference,write:inference")
    stack.cli("credits", "grant", "--account", account, "--credits", "10")
    stack.cli("keys", "set-limits", key["key_id"], "--rpm", "1")
    client = sdk(front_door, key["key"])
    client.messages.create(model=MODEL, max_tokens=5, messages=messages)  # type: ignore[arg-type]
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model=MODEL, max_tokens=5, messages=messages)  # type: ignore[arg-type]
    assert limited.value.response.headers["retry-after"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=0, messages=messages)  # type: ignore[arg-type]
    with pytest.raises(anthropic.NotFoundError):
        sdk(front_door, key["key"]).messages.count_tokens(model=MODEL, messages=messages)  # type: ignore[arg-type]


def test_the_key_never_reaches_the_model_server_and_the_api_headers_do(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    key = funded_key(stack, account)
    marker = f"[[tokens:3]] anthropic-headers {account}"
    client = anthropic.Anthropic(
        api_key=key,
        base_url=front_door.base_url + "/api",
        max_retries=0,
        default_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    client.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "user", "content": marker}])
    [seen] = [s for s in upstream_seen(stack) if s["body"] and marker in str(s["body"])]
    headers = seen["headers"]
    assert seen["path"] == "/v1/messages"
    assert "x-api-key" not in headers and key not in str(seen)
    assert headers["authorization"] == f"Bearer {stack.upstream_key}"
    assert headers["anthropic-version"] and headers["anthropic-beta"] == "prompt-caching-2024-07-31"


def test_two_keys_that_disagree_are_refused(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key, other = funded_key(stack, account), funded_key(stack, account + "-other")
    r = httpx.post(
        front_door.base_url + "/api/v1/messages",
        headers={"x-api-key": key, "authorization": f"Bearer {other}", "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 401 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "authentication_error"


# -- cache reads and writes at their own prices (a catalog that names them) ----------------------------

PRICED = 'price = { input = "0.15", output = "0.30", cached_input = "0.015", cache_write_5m = "0.1875", cache_write_1h = "0.30" }'


@pytest.fixture(scope="module")
def priced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("priced")
    catalog = workdir / "catalog.toml"
    text = (REPO / "src/critique_sidecar/catalog.toml").read_text()
    catalog.write_text(text.replace('price = { input = "0.15", output = "0.30" }', PRICED, 1))
    stack = Stack(workdir / "stack", front_doors=FRONT_DOORS, sidecar_env={"CRITIQUE_CATALOG_PATH": str(catalog)})
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("door_name", FRONT_DOORS)
def test_cache_reads_and_writes_at_their_own_prices(priced: Stack, door_name: str, account: str) -> None:
    door = front_door(priced, door_name)
    key = funded_key(priced, account)
    before = balance(priced, account)
    prompt = "[[tokens:10]] [[cached:1000]] [[cachewrite:200]] [[cachewrite1h:100]] " + "w" * 6000
    raw = sdk(door, key).messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": prompt}]
    )
    u = raw.parse().usage
    # by hand: fresh input x 0.15 + reads x 0.015 + 5-minute writes x 0.1875 + 1-hour writes x 0.30
    # + output x 0.30, USD per million, rounded up once to a micro-credit
    usd = (u.input_tokens * Decimal("0.15") + 1000 * Decimal("0.015") + 200 * Decimal("0.1875")
           + 100 * Decimal("0.30") + u.output_tokens * Decimal("0.30")) / 1_000_000  # fmt: skip
    micro = -(-usd * 100 * 1_000_000 // 1)
    assert raw.headers["x-critique-credits-charged"] == f"{micro / 1_000_000:.6f}"
    assert before - balance(priced, account) == micro / 1_000_000
    [record] = usage_records(priced, account)
    assert (record["cache_write_5m_tokens"], record["cache_write_1h_tokens"]) == ("200", "100")


def test_the_front_doors_own_refusals_are_in_anthropics_shape(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    """What Envoy or the gateway answer themselves (a body over the metering limit, one over
    Envoy's own buffer, a method the endpoint does not take) reach an Anthropic client in
    Anthropic's shape with the product's code."""
    key = funded_key(stack, account)
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    url = front_door.base_url + "/api/v1/messages"
    for size in (5 << 20, 17 << 20):
        big = httpx.post(url, headers=headers, content=b"w" * size, timeout=60)
        assert big.status_code == 413, size
        assert big.json() == {
            "type": "error", "error": {"type": "request_too_large", "message": big.json()["error"]["message"],
                                       "code": "request_too_large"}}, size  # fmt: skip
    wrong = httpx.get(url, headers=headers)
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
    # the same refusal on an OpenAI endpoint keeps OpenAI's shape
    chat = httpx.post(front_door.base_url + "/api/v1/chat/completions", headers=headers, content=b"w" * (17 << 20))
    assert chat.status_code == 413 and chat.json()["error"]["code"] == "request_too_large" and "type" not in chat.json()
