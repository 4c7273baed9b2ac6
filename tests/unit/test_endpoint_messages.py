"""core/endpoints/messages.py: Anthropic's Messages API. `max_tokens` required and clamped; the
input is fresh + cache reads + cache writes (Anthropic's `input_tokens` leaves the cache out);
streams: input from message_start, cumulative output from message_delta, message_stop held for
the charge; errors in Anthropic's shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints import messages
from critique_sidecar.core.endpoints.base import Limits, StreamTally, client_key
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.sse import SseMeter
from critique_sidecar.core.tokens import TokenCounts

DEEPSEEK = "deepseek/deepseek-v4-flash"
LIMITS = Limits(load_catalog())
MSGS = [{"role": "user", "content": "Summarize this retry policy."}]


def parse(**fields: Any) -> Any:
    return messages.parse(orjson.dumps({"model": DEEPSEEK, "messages": MSGS, **fields}), LIMITS)


def refused(**fields: Any) -> ApiError:
    with pytest.raises(ApiError) as err:
        parse(**fields)
    return err.value


def test_max_tokens_is_required_and_clamped() -> None:
    assert refused().param == "max_tokens"
    assert parse(max_tokens=100).output_bound == 100 and not parse(max_tokens=100).changed
    big = parse(max_tokens=10**6)
    assert big.body["max_tokens"] == 32_768 and big.changed


def test_a_thinking_budget_stays_below_a_clamped_max_tokens() -> None:
    req = parse(max_tokens=10**6, thinking={"type": "enabled", "budget_tokens": 100_000})
    assert req.body["thinking"]["budget_tokens"] < req.body["max_tokens"] == 32_768


def test_model_is_required_and_messages_are_objects() -> None:
    with pytest.raises(ApiError) as err:
        messages.parse(orjson.dumps({"messages": MSGS, "max_tokens": 5}), LIMITS)
    assert err.value.param == "model"
    assert refused(max_tokens=5, messages=["hi"]).param == "messages"


def test_an_image_block_holds_the_context_window() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://i.example/x.png"}}
    req = parse(max_tokens=5, messages=[{"role": "user", "content": [image]}])
    assert req.input_bound == 1_000_000


@pytest.mark.parametrize(
    "usage, expected",
    [
        ({"input_tokens": 10, "output_tokens": 5}, TokenCounts(10, 5)),
        # cache reads and writes are not in input_tokens: added, and kept apart
        ({"input_tokens": 10, "cache_read_input_tokens": 300, "cache_creation_input_tokens": 40, "output_tokens": 5},
         TokenCounts(350, 5, cached_input_tokens=300, cache_write_5m_tokens=40)),
        # the 5-minute / 1-hour split, when given
        ({"input_tokens": 2, "cache_creation_input_tokens": 100, "output_tokens": 1,
          "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 70}},
         TokenCounts(102, 1, cache_write_5m_tokens=30, cache_write_1h_tokens=70)),
        # a split that says more than the total cannot add tokens
        ({"input_tokens": 2, "cache_creation_input_tokens": 10, "output_tokens": 1,
          "cache_creation": {"ephemeral_1h_input_tokens": 10**9}},
         TokenCounts(12, 1, cache_write_1h_tokens=10)),
        ({"input_tokens": -1, "output_tokens": 5}, None),
        ({"input_tokens": 3}, None),
    ],
)  # fmt: skip
def test_usage_adds_the_cache_to_the_input(usage: dict[str, Any], expected: TokenCounts | None) -> None:
    assert messages.usage({"usage": usage}) == expected


def event(kind: str, **fields: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **fields}) + b"\n\n"


def started(usage: dict[str, Any]) -> bytes:
    return event("message_start", message={"id": "m", "usage": usage})


def test_a_stream_takes_input_from_message_start_and_output_from_message_delta() -> None:
    meter = SseMeter(messages.MessagesStream(), StreamTally())
    start = {"input_tokens": 12, "cache_read_input_tokens": 100, "output_tokens": 1}
    body = (
        started(start)
        + event("ping")
        + event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "hmm"})
        + event("content_block_delta", index=1, delta={"type": "text_delta", "text": "héllo"})
        + event("content_block_delta", index=2, delta={"type": "input_json_delta", "partial_json": '{"a":'})
        + event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 42})
    )
    assert meter.feed(body) == body
    stop = event("message_stop")
    assert meter.feed(stop) == b"" and meter.done  # held: the charge goes before it
    assert meter.tally.usage == TokenCounts(112, 42, cached_input_tokens=100) and meter.tally.final
    assert meter.tally.output_bytes == 3 + 6 + 5 and meter.tally.text_events == 3
    assert meter.finish() == stop


def test_a_stream_cut_before_message_delta_has_its_input_but_no_final_usage() -> None:
    meter = SseMeter(messages.MessagesStream(), StreamTally())
    meter.feed(started({"input_tokens": 12, "output_tokens": 1}))
    meter.feed(event("content_block_delta", index=0, delta={"type": "text_delta", "text": "abcdefgh"}))
    assert meter.tally.usage == TokenCounts(12, 1) and not meter.tally.final  # output: by the estimate


def test_two_keys_that_disagree_are_no_key() -> None:
    keys = messages.ENDPOINT.key_headers
    assert client_key({"x-api-key": "crt_a"}, keys) == "Bearer crt_a"
    assert client_key({"authorization": "Bearer crt_a"}, keys) == "Bearer crt_a"
    assert client_key({"x-api-key": "crt_a", "authorization": "Bearer crt_a"}, keys) == "Bearer crt_a"
    assert client_key({"x-api-key": "crt_a", "authorization": "Bearer crt_b"}, keys) == ""  # a 401


def test_errors_are_in_anthropics_shape() -> None:
    error = ApiError("insufficient_credits", "no credits")
    error.shape = messages.ENDPOINT.error_shape
    assert orjson.loads(error.body()) == {
        "type": "error",
        "error": {"type": "billing_error", "message": "no credits", "code": "insufficient_credits"},
    }
    for code, kind in (("invalid_api_key", "authentication_error"), ("insufficient_scope", "permission_error"),
                       ("model_not_found", "not_found_error"), ("rate_limit_exceeded", "rate_limit_error"),
                       ("invalid_request", "invalid_request_error")):  # fmt: skip
        e = ApiError(code, "x")
        e.shape = "anthropic"
        assert orjson.loads(e.body())["error"]["type"] == kind
