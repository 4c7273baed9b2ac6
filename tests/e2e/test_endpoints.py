"""Every OpenAI endpoint an agent runtime speaks, through both front doors with the official
openai SDK: the Responses API (JSON and stream), legacy completions (with n, and streamed),
embeddings (base64, the SDK's default, and float). Charges are written by hand from the usage
the model server reported and the catalog's prices; the balance moves by exactly the sum. Cut
streams settle once by the estimation rule; input kept on a server is refused before any hold;
nothing else under /api/v1/ reaches a model server."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from critique_sidecar.devtools.stack import Stack

from .helpers import (
    FrontDoor,
    balance,
    expected_charge,
    funded_key,
    upstream_count,
    upstream_seen,
    usage_records,
    wait_for_records,
)

MODEL = "deepseek/deepseek-v4-flash"
EMBED = "example/text-embedding-small"


def sdk(door: FrontDoor, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=door.base_url + "/api/v1", max_retries=0, timeout=60)


def charged(record: dict[str, str]) -> Decimal:
    return Decimal(int(record["credits"])) / 1_000_000


def test_responses_json(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    before = balance(stack, account)
    raw = sdk(front_door, key).responses.with_raw_response.create(
        model=MODEL, input="[[tokens:20]] Summarize this retry policy.", max_output_tokens=64
    )
    response = raw.parse()
    assert response.output_text == "tok " * 20 and response.model == MODEL
    assert response.usage is not None
    credits, usd = expected_charge(MODEL, response.usage.input_tokens, response.usage.output_tokens)
    assert (raw.headers["x-critique-credits-charged"], raw.headers["x-critique-estimated-usd"]) == (credits, usd)
    assert before - balance(stack, account) == Decimal(credits)
    [record] = usage_records(stack, account)
    assert record["endpoint"] == "responses" and record["status"] == "ok"
    sent = [s for s in upstream_seen(stack) if s["path"] == "/v1/responses"][-1]["body"]
    assert sent["store"] is False and sent["max_output_tokens"] == 64  # stateless; the bound it was held for


def test_responses_stream(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    before = balance(stack, account)
    events = list(
        sdk(front_door, key).responses.create(model=MODEL, input="[[tokens:30]] [[reasoning]] go", stream=True)
    )
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "tok " * 30
    [done] = [e for e in events if e.type == "response.completed"]
    usage = done.response.usage
    assert usage is not None and usage.output_tokens_details.reasoning_tokens == 30  # a part of output_tokens
    credits, _ = expected_charge(MODEL, usage.input_tokens, usage.output_tokens)
    assert before - balance(stack, account) == Decimal(credits)
    [record] = wait_for_records(stack, account, 1)
    assert (record["endpoint"], record["status"], record["reasoning_tokens"]) == ("responses", "ok", "30")


def test_a_cut_responses_stream_settles_once_by_the_estimate(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    received = []
    with pytest.raises(openai.APIError):
        for event in sdk(front_door, key).responses.create(model=MODEL, input="[[tokens:40]] [[cut]] go", stream=True):
            if event.type == "response.output_text.delta":
                received.append(event.delta)
    [record] = wait_for_records(stack, account, 1)
    assert record["status"] == "interrupted" and record["estimated"] == "1"
    # every delta the client received ("tok ": a token each); Envoy drops what was in flight at
    # the model server's reset, which the client never saw
    assert len(received) <= int(record["output_tokens"]) <= 32_768


def test_completions_with_n_and_streamed(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    client = sdk(front_door, key)
    before = balance(stack, account)
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="[[tokens:8]] Once upon", n=3, max_tokens=8)
    completion = raw.parse()
    assert [c.text for c in completion.choices] == ["tok " * 8] * 3 and completion.usage is not None
    assert completion.usage.completion_tokens == 24
    first, _ = expected_charge(MODEL, completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert raw.headers["x-critique-credits-charged"] == first
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="[[tokens:6]] Once", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok " * 6
    [usage] = [c.usage for c in chunks if c.usage is not None]
    second, _ = expected_charge(MODEL, usage.prompt_tokens, usage.completion_tokens)
    assert before - balance(stack, account) == Decimal(first) + Decimal(second)
    records = wait_for_records(stack, account, 2)
    assert {r["endpoint"] for r in records} == {"completions"}


def test_a_cut_completions_stream_settles_once_by_the_estimate(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    key = funded_key(stack, account)
    received = []
    with pytest.raises(openai.APIError):
        for chunk in sdk(front_door, key).completions.create(
            model=MODEL, prompt="[[tokens:40]] [[cut]]", stream=True, max_tokens=40
        ):
            received += [c.text for c in chunk.choices if c.text]
    [record] = wait_for_records(stack, account, 1)
    assert record["status"] == "interrupted" and record["estimated"] == "1"
    assert len(received) <= int(record["output_tokens"]) <= 40


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_embeddings_pass_through_byte_for_byte_and_bill_input(
    stack: Stack, front_door: FrontDoor, account: str, encoding: str
) -> None:
    key = funded_key(stack, account)
    before = balance(stack, account)
    kwargs = {} if encoding == "base64" else {"encoding_format": "float"}  # the SDK asks for base64 by default
    raw = sdk(front_door, key).embeddings.with_raw_response.create(model=EMBED, input=["alpha", "beta gamma"], **kwargs)  # type: ignore[arg-type]
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) == 8
    body = {"model": EMBED, "input": ["alpha", "beta gamma"], "encoding_format": encoding}
    direct = httpx.post(
        f"http://127.0.0.1:{stack.ports['upstream']}/v1/embeddings",
        json=body,
        headers={"authorization": f"Bearer {stack.upstream_key}"},
    )
    assert raw.http_response.content == direct.content  # the vectors as the model server sent them
    credits, _ = expected_charge(EMBED, result.usage.prompt_tokens, 0)
    assert raw.headers["x-critique-credits-charged"] == credits
    assert before - balance(stack, account) == Decimal(credits)
    [record] = usage_records(stack, account)
    assert record["endpoint"] == "embeddings" and record["output_tokens"] == "0"


def test_input_kept_on_a_server_is_refused_before_any_hold(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account, "1")
    before, seen = balance(stack, account), upstream_count(stack)
    for extra in ({"previous_response_id": "resp_other_tenant"}, {"conversation": "conv_1"}, {"background": True}):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk(front_door, key).responses.create(model=MODEL, input="go on", **extra)  # type: ignore[call-overload]
        assert caught.value.code == "invalid_request" and caught.value.param == next(iter(extra))
    assert balance(stack, account) == before and upstream_count(stack) == seen and usage_records(stack, account) == []


def test_an_image_in_responses_cannot_cross_a_floor(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account, "10")
    image = {
        "role": "user",
        "content": [{"type": "input_image", "image_url": "https://i.example/x.png", "detail": "auto"}],
    }
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(front_door, key).responses.create(model=MODEL, input=[image], max_output_tokens=10)  # type: ignore[list-item]
    assert caught.value.status_code == 402 and caught.value.code == "insufficient_credits"


@pytest.mark.parametrize(
    "method, path, status, words",
    [
        ("GET", "/api/v1/responses/resp_123", 404, "Stored responses are not kept"),
        ("DELETE", "/api/v1/responses/resp_123", 404, "Stored responses are not kept"),
        ("POST", "/api/v1/responses/resp_123/cancel", 404, "Stored responses are not kept"),
        ("POST", "/api/v1/files", 404, "No such endpoint"),
        ("POST", "/api/v1/images/generations", 404, "No such endpoint"),
        ("GET", "/api/v1/chat/completions", 405, "Use POST"),
        ("PUT", "/api/v1/embeddings", 405, "Use POST"),
    ],
)
def test_nothing_else_under_the_api_reaches_a_model_server(
    stack: Stack, front_door: FrontDoor, account: str, method: str, path: str, status: int, words: str
) -> None:
    key = funded_key(stack, account, "0")
    seen = upstream_count(stack)
    r = httpx.request(
        method, front_door.base_url + path, headers={"authorization": f"Bearer {key}"}, json={"model": MODEL}
    )
    assert r.status_code == status and words in r.json()["error"]["message"], r.text
    assert r.json()["error"]["code"] in ("not_found", "method_not_allowed")
    assert upstream_count(stack) == seen
