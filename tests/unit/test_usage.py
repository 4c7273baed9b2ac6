"""Chat completions' usage (core/endpoints/chat.py) and generated output: "not reported" is not
zero; details are parts of their totals."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from critique_sidecar.core.endpoints import chat
from critique_sidecar.core.endpoints.base import read_json
from critique_sidecar.core.endpoints.chat import usage as usage_from_obj
from critique_sidecar.core.endpoints.openai_stream import choices_bytes as completion_text_bytes
from critique_sidecar.core.tokens import TokenCounts


def parse_json_response(raw: bytes) -> tuple[TokenCounts | None, int]:
    _, usage, output_bytes = read_json(chat.ENDPOINT, raw)
    return usage, output_bytes


def completion(content: str = "Hello!", usage: Any = None, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    if usage is not None:
        obj["usage"] = usage
    obj.update(extra)
    return obj


def test_usage_reported() -> None:
    obj = completion(usage={"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46})
    assert usage_from_obj(obj) == TokenCounts(12, 34)


def test_zero_usage_is_reported_not_missing() -> None:
    u = usage_from_obj(completion(usage={"prompt_tokens": 0, "completion_tokens": 0}))
    assert u is not None
    assert u == TokenCounts(0, 0)


@pytest.mark.parametrize(
    "obj",
    [
        completion(),  # no usage key
        completion(extra_key=1) | {"usage": None},  # usage: null (e.g. a mid-stream chunk)
        completion(usage=[]),
        completion(usage="12"),
        completion(usage={}),
        completion(usage={"prompt_tokens": 5}),
        completion(usage={"completion_tokens": 5}),
        None,
        [],
        "usage",
        42,
    ],
)
def test_usage_not_reported(obj: Any) -> None:
    assert usage_from_obj(obj) is None


@pytest.mark.parametrize("bad", [True, False, -1, 1.0, 2.5, "12", None, [], {}, float("nan")])
@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens"])
def test_bad_token_counts_are_not_reported(bad: Any, field: str) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 20}
    usage[field] = bad
    assert usage_from_obj({"usage": usage}) is None


def test_large_counts_are_kept() -> None:
    assert usage_from_obj({"usage": {"prompt_tokens": 2**40, "completion_tokens": 1}}) == TokenCounts(2**40, 1)


def test_stream_chunk_with_usage() -> None:
    chunk = {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    assert usage_from_obj(chunk) == TokenCounts(3, 4)


def test_parse_json_response_with_usage() -> None:
    raw = orjson.dumps(completion("héllo", usage={"prompt_tokens": 7, "completion_tokens": 2}))
    assert parse_json_response(raw) == (TokenCounts(7, 2), len("héllo".encode()))


def test_cached_and_reasoning_details_are_parts_of_their_totals() -> None:
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 25},
    }
    u = usage_from_obj({"usage": usage})
    assert u == TokenCounts(100, 40, cached_input_tokens=60, reasoning_tokens=25)
    assert u is not None and u.fresh_input_tokens == 40 and u.total == 140


@pytest.mark.parametrize("cached", [-1, "60", 1.5, None, True])
def test_a_detail_that_is_not_a_count_is_zero(cached: Any) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": cached}}
    assert usage_from_obj({"usage": usage}) == TokenCounts(10, 4)


def test_a_part_larger_than_its_total_is_cut_to_it() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 10**9},
        "completion_tokens_details": {"reasoning_tokens": 99},
    }
    assert usage_from_obj({"usage": usage}) == TokenCounts(10, 4, cached_input_tokens=10, reasoning_tokens=4)


def test_parse_json_response_with_zero_usage() -> None:
    raw = orjson.dumps(completion("", usage={"prompt_tokens": 0, "completion_tokens": 0}))
    usage, _ = parse_json_response(raw)
    assert usage == TokenCounts(0, 0)


def test_parse_json_response_without_usage_counts_text_bytes() -> None:
    raw = orjson.dumps(completion("héllo 🙂"))
    usage, text_bytes = parse_json_response(raw)
    assert usage is None
    assert text_bytes == len("héllo 🙂".encode()) == 11


def test_parse_json_response_bad_usage_types_count_text() -> None:
    raw = orjson.dumps(completion("abc", usage={"prompt_tokens": True, "completion_tokens": 1}))
    assert parse_json_response(raw) == (None, 3)


@pytest.mark.parametrize("raw", [b"", b"{", b"<html>502 Bad Gateway</html>", b"\xff\xfe"])
def test_parse_json_response_not_json(raw: bytes) -> None:
    assert parse_json_response(raw) == (None, len(raw))


@pytest.mark.parametrize("raw", [b"[]", b"null", b'"text"', b"1"])
def test_parse_json_response_json_but_not_object(raw: bytes) -> None:
    usage, text_bytes = parse_json_response(raw)
    assert usage is None
    assert 0 <= text_bytes <= len(raw)


def test_completion_text_bytes_message_and_delta() -> None:
    obj = {
        "choices": [
            {"message": {"content": "ab"}},
            {"delta": {"content": "ü"}},  # 2 bytes
            {"delta": {"content": "€"}},  # 3 bytes
            {"delta": {"role": "assistant"}},
            {"delta": {"content": None}},
            {"message": {"content": ["not", "a", "string"]}},
            "not a choice",
            None,
        ]
    }
    assert completion_text_bytes(obj) == 2 + 2 + 3


def test_completion_text_bytes_counts_legacy_completion_text() -> None:
    assert completion_text_bytes({"choices": [{"text": "héllo"}, {"text": None}]}) == 6


def test_completion_text_bytes_empty_message_falls_back_to_delta() -> None:
    assert completion_text_bytes({"choices": [{"message": {}, "delta": {"content": "xyz"}}]}) == 3


@pytest.mark.parametrize("obj", [None, [], "x", {}, {"choices": None}, {"choices": "abc"}, {"choices": {"0": {}}}])
def test_completion_text_bytes_of_odd_shapes(obj: Any) -> None:
    assert completion_text_bytes(obj) == 0


def test_completion_text_bytes_lone_surrogate_does_not_raise() -> None:
    assert completion_text_bytes({"choices": [{"delta": {"content": "a\ud800b"}}]}) == 3
