"""The meter reads what the client reads, through both front doors with a vLLM-like model server
(the fake's adversarial directives, devtools/adversarial.py):

- streams framed every way the SSE specification allows (`\\n\\r\\n` event ends, CR-only lines
  with `id:` fields, CRLF, a mix, JSON split over two `data:` lines) are read by the openai SDK
  and metered the same: the usage they report, charged in the comment line the SDK ignores;
- a stream cut before its final usage (the client hangs up) is never charged below what the
  client received: vLLM's per-choice mid-stream usage (n = 8, continuous_usage_stats) and dense
  one-token events (" a") can raise the charge, never lower it, and it stays within the hold;
- a JSON response of several MiB (n = 8, logprobs with 20 alternatives) is metered, not turned
  into an error;
- a request whose input the body does not bound (an image) is held at the context window, so
  it cannot cross a reserve floor."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from openai._streaming import SSEDecoder

from critique_sidecar.devtools.stack import FRONT_DOORS, Stack

from .helpers import FrontDoor, balance, expected_charge, front_door, funded_key, usage_records, wait_for_records

MODEL = "deepseek/deepseek-v4-flash"
BUDGET = 32_768


def sdk(door: FrontDoor, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=door.base_url + "/api/v1", max_retries=0, timeout=120)


def read_until(door: FrontDoor, key: str, body: dict[str, Any], pieces: int | None) -> tuple[int, list[str], bytes]:
    """Stream `body` and read it as the SDK does, hanging up once `pieces` text deltas came (None:
    read it all). (text deltas received, the events' data, the raw bytes)."""
    got, data, raw = 0, [], bytearray()

    def pieces_read(response: httpx.Response) -> Iterator[bytes]:
        for chunk in response.iter_raw():
            raw.extend(chunk)
            yield chunk

    with httpx.stream(
        "POST", door.chat_url, json=body, headers={"authorization": f"Bearer {key}"}, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        for event in SSEDecoder().iter_bytes(pieces_read(response)):  # one decoder over the stream
            data.append(event.data)
            if event.data.startswith("[DONE]"):
                continue
            for choice in json.loads(event.data).get("choices", []):
                if (choice.get("delta") or {}).get("content"):
                    got += 1
            if pieces is not None and got >= pieces:
                break  # the client hangs up
    return got, data, bytes(raw)


@pytest.mark.parametrize("framing", [1, 2, 3, 4, 5])
def test_every_framing_the_sdk_reads_is_metered_as_it_reads(
    stack: Stack, front_door: FrontDoor, account: str, framing: int
) -> None:
    key = funded_key(stack, account)
    prompt = f"[[framing:{framing}]] [[tokens:40]] framing {framing}"
    chunks = list(
        sdk(front_door, key).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok " * 40  # the SDK read every event
    [usage] = [c.usage for c in chunks if c.usage is not None]
    [record] = wait_for_records(stack, account, 1)
    assert (int(record["input_tokens"]), int(record["output_tokens"])) == (usage.prompt_tokens, usage.completion_tokens)
    assert record["estimated"] == "0" and record["status"] == "ok"
    credits, _ = expected_charge(MODEL, usage.prompt_tokens, usage.completion_tokens)
    assert int(record["credits"]) == int(Decimal(credits) * 1_000_000)


@pytest.mark.parametrize("framing", [2, 4])
def test_a_cut_stream_in_any_framing_is_charged_what_was_delivered(
    stack: Stack, front_door: FrontDoor, account: str, framing: int
) -> None:
    key = funded_key(stack, account)
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"[[framing:{framing}]] [[tokens:400]] [[slow:2]]"}],
            "stream": True, "max_tokens": 400}  # fmt: skip
    got, _, _ = read_until(front_door, key, body, 300)
    [record] = wait_for_records(stack, account, 1)
    assert record["status"] == "interrupted"
    assert got <= int(record["output_tokens"]) <= 400  # never below delivery, never above the bound


def test_vllm_per_choice_usage_never_lowers_a_cut_stream_below_delivery(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    """n = 8 and continuous_usage_stats: each chunk's usage counts one choice's tokens so far;
    the client hangs up near the end, before the final usage that counts them all."""
    key = funded_key(stack, account, "100")
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "[[vllm]] [[tokens:500]] [[slow:2]]"}],
        "stream": True,
        "n": 8,
        "max_tokens": 500,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    got, data, _ = read_until(front_door, key, body, 3_600)
    chunks = [json.loads(d) for d in data if d.startswith("{")]
    mid_stream = [c["usage"]["completion_tokens"] for c in chunks if c.get("usage") and c["choices"]]
    assert mid_stream and max(mid_stream) <= 500  # one choice's count: what the meter used to bill
    [record] = wait_for_records(stack, account, 1)
    assert record["status"] == "interrupted" and record["estimated"] == "1"
    assert 3_600 <= got <= int(record["output_tokens"]) <= 8 * 500


def test_dense_one_token_events_are_charged_a_token_each(stack: Stack, front_door: FrontDoor, account: str) -> None:
    """Each event carries " a" (2 bytes, one token): ~4 bytes per token would bill half."""
    key = funded_key(stack, account)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "[[dense]] [[tokens:2000]] [[slow:1]]"}],
            "stream": True, "max_tokens": 2000}  # fmt: skip
    got, _, _ = read_until(front_door, key, body, 1_990)
    [record] = wait_for_records(stack, account, 1)
    assert 1_990 <= got <= int(record["output_tokens"]) <= 2000


def test_a_json_response_of_several_mib_is_metered(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account, "100")
    raw = sdk(front_door, key).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "[[vllm]] [[tokens:700]]"}],
        n=8,
        max_tokens=700,
        logprobs=True,
        top_logprobs=20,
    )
    assert len(raw.http_response.content) > 5_000_000
    completion = raw.parse()
    assert len(completion.choices) == 8 and completion.usage is not None
    credits, _ = expected_charge(MODEL, completion.usage.prompt_tokens, completion.usage.completion_tokens)
    assert raw.headers["x-critique-credits-charged"] == credits
    [record] = usage_records(stack, account)
    assert record["status"] == "ok" and int(record["output_tokens"]) == 8 * 700


def test_an_image_holds_the_context_window_and_the_floor_holds(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    """An image's tokens are not bounded by its bytes: the input is held at the model's 1M-token
    context window (15 credits at $0.15 per million), more than this account may spend."""
    key = funded_key(stack, account, "10")
    before = balance(stack, account)
    image = {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}}
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(front_door, key).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": [{"type": "text", "text": "what is it"}, image]}],  # type: ignore[list-item]
            max_tokens=10,
        )
    assert caught.value.status_code == 402 and caught.value.code == "insufficient_credits"
    assert balance(stack, account) == before and usage_records(stack, account) == []
    # without the image the same request fits
    completion = sdk(front_door, key).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "what is it"}]}], max_tokens=10
    )
    assert completion.usage is not None


# -- past the configured maximum: never turned into input-only, charged the hold's output bound ---

SMALL_LIMIT = 1 << 20


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose doors meter JSON responses up to 1 MiB (envoy-config --max-response-bytes and
    CRITIQUE_MAX_RESPONSE_BYTES, kept equal)."""
    from critique_sidecar.core.catalog import load_catalog
    from critique_sidecar.envoy.config import EnvoyOptions, render

    workdir = tmp_path_factory.mktemp("small-limit")
    config = workdir / "envoy-small.yaml"
    config.write_text(render(load_catalog(), EnvoyOptions(max_response_bytes=SMALL_LIMIT)))
    stack = Stack(workdir / "stack", envoy_config=config, front_doors=FRONT_DOORS,
                  sidecar_env={"CRITIQUE_MAX_RESPONSE_BYTES": str(SMALL_LIMIT)})  # fmt: skip
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.mark.parametrize("door_name", FRONT_DOORS)
def test_a_response_past_the_maximum_is_charged_its_output_bound(
    small_limit: Stack, door_name: str, account: str
) -> None:
    """Envoy cannot pass it on (502 response_too_large, which the SDKs are told not to retry
    blindly: a retry would be charged again); the ASGI door passes it unmetered with a warning.
    Either way the model server generated it: charged as estimated, output at its bound."""
    door = front_door(small_limit, door_name)
    key = funded_key(small_limit, account, "100")
    # ~5 MB: past the 1 MiB limit on both doors (Envoy's stream also holds a 4 MiB request body)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "[[vllm]] [[tokens:600]]"}], "n": 8,
            "max_tokens": 600, "logprobs": True, "top_logprobs": 20}  # fmt: skip
    r = httpx.post(door.chat_url, json=body, headers={"authorization": f"Bearer {key}"}, timeout=60)
    if door_name == "envoy":
        assert r.status_code == 502 and r.json()["error"]["code"] == "response_too_large"
    else:
        assert r.status_code == 200 and len(r.content) > SMALL_LIMIT
        assert r.headers["x-critique-warning"] == "response_too_large"
        assert "x-critique-credits-charged" not in r.headers
    [record] = wait_for_records(small_limit, account, 1)
    assert record["estimated"] == "1" and record["status"] == "interrupted"
    assert int(record["output_tokens"]) == 8 * 600  # what it generated at most: never input only
