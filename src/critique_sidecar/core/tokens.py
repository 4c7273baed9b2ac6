"""Token counts from upstream responses (OpenAI's `usage` object). "Not reported" (None) is kept
apart from zero.

Naming: `TokenCounts` are tokens a model server reported or we estimated; a "usage record" is the
billing record of one settlement (core/ledger.UsageRecord, the per-account usage streams)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class TokenCounts:
    input_tokens: int
    output_tokens: int


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def usage_from_obj(obj: Any) -> TokenCounts | None:
    """`usage` of a chat completion object or stream chunk, if well-formed."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    return TokenCounts(prompt, completion)


def parse_json_response(raw: bytes) -> tuple[TokenCounts | None, int]:
    """(usage, bytes of completion text) of a non-streaming response body.

    The text size feeds the estimate when usage is missing; a body that is not JSON at all
    counts whole (None, len(raw)); JSON without usage counts its completion text."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, len(raw)
    usage = usage_from_obj(obj)
    return usage, completion_text_bytes(obj) if usage is None else 0


def _utf8(value: Any) -> int:
    return len(value.encode("utf-8", "replace")) if isinstance(value, str) else 0


# Every field a model server streams generated tokens in: content, reasoning (vLLM's and
# OpenRouter's names), refusal; tool-call names and arguments are counted below.
_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


def _generated_bytes(part: dict[str, Any]) -> int:
    total = sum(_utf8(part.get(name)) for name in _TEXT_FIELDS)
    calls = part.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            total += _utf8(function.get("name")) + _utf8(function.get("arguments"))
    legacy = part.get("function_call")
    if isinstance(legacy, dict):
        total += _utf8(legacy.get("name")) + _utf8(legacy.get("arguments"))
    return total


def completion_text_bytes(obj: Any) -> int:
    """UTF-8 bytes of everything generated in a completion or chunk, every choice: content,
    reasoning, refusal, tool-call names and arguments (the output side of the estimate)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        return 0
    total = 0
    for choice in obj["choices"]:
        if not isinstance(choice, dict):
            continue
        part = choice.get("message") or choice.get("delta")
        if isinstance(part, dict):
            total += _generated_bytes(part)
    return total


def decode_body(raw: bytes, content_encoding: str, limit: int = 64 << 20) -> bytes:
    """The body as the upstream meant it: gzip/deflate undone (bounded), others as they are.
    Used for metering only; the client still receives what the upstream sent."""
    encoding = content_encoding.strip().lower()
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return raw
    try:
        inflater = zlib.decompressobj(47)  # gzip or zlib header, detected
        return inflater.decompress(raw, limit)
    except zlib.error:
        return raw
