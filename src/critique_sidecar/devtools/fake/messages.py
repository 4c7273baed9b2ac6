"""Anthropic's Messages API (POST /v1/messages), as Anthropic, vLLM and SGLang answer it: a
message with `content` blocks and a `usage` whose `input_tokens` leaves out the prompt cache's
reads and writes; streamed as `event:` + `data:` pairs: `message_start` (the input counts),
content blocks and their deltas, `message_delta` (the cumulative output), `message_stop`.

Directives: [[cached:N]] cache reads, [[cachewrite:N]] 5-minute writes, [[cachewrite1h:N]] 1-hour
writes (reported in `cache_creation`), [[thinking]] a thinking block before the text,
[[tooluse]] a tool_use block streamed as input_json_delta, [[startonly]] no usage in
`message_delta` (only `message_start`'s), [[absurdcache:K]] cache counts that are not sane
integers (K as [[absurd:K]]), [[cut]], [[forge]], [[absurd:K]], [[framing:K]]."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .. import adversarial as adv
from .common import approx_tokens, directives, early_answer, json_response, output_tokens


def last_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return str(messages[-1].get("content", "")) if messages and isinstance(messages[-1], dict) else ""


def _usage(d: dict[str, int], prompt: int, output: int) -> dict[str, Any]:
    """The prompt's tokens split as a server reports them: read from the cache, written to it,
    and the rest (`input_tokens`, which leaves both out)."""
    read = min(d.get("cached", 0), prompt)
    w5 = min(d.get("cachewrite", 0), prompt - read)
    w1h = min(d.get("cachewrite1h", 0), prompt - read - w5)
    usage: dict[str, Any] = {
        "input_tokens": prompt - read - w5 - w1h,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": w5 + w1h,
        "output_tokens": output,
    }
    if w1h:
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1h}
    if "absurd" in d:
        absurd = adv.absurd_usage(d["absurd"], prompt, output)
        usage.update(input_tokens=absurd.get("prompt_tokens"), output_tokens=absurd.get("completion_tokens"))
    if "absurdcache" in d:
        odd = adv.absurd_usage(d["absurdcache"], prompt, prompt)
        odd_read, odd_written = odd.get("prompt_tokens"), odd.get("completion_tokens")
        usage.update(cache_read_input_tokens=odd_read, cache_creation_input_tokens=odd_written)
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": odd_read, "ephemeral_1h_input_tokens": odd_written}
    return usage


async def messages(request: Request, body: dict[str, Any]) -> Response:
    if not isinstance(body.get("max_tokens"), int):  # as the API: required
        err = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"}}
        return Response(orjson.dumps(err), status_code=400, media_type="application/json")
    d = directives(last_text(body))
    if (early := early_answer(d)) is not None:
        return early
    tokens = output_tokens(d, body)
    prompt = approx_tokens("".join(str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict)))
    thinking = tokens if "thinking" in d else 0
    usage = _usage(d, prompt, tokens + thinking)
    mid = f"msg_fake{time.monotonic_ns()}"
    if body.get("stream"):
        return StreamingResponse(_stream(body, mid, tokens, thinking, usage, d), media_type="text/event-stream")
    content: list[dict[str, Any]] = []
    if thinking:
        content.append({"type": "thinking", "thinking": "think " * thinking, "signature": "sig"})
    content.append({"type": "text", "text": "tok " * tokens})
    if "tooluse" in d:
        content.append({"type": "tool_use", "id": "toolu_fake", "name": "lookup", "input": {"q": "tok " * tokens}})
    out = {
        "id": mid, "type": "message", "role": "assistant", "model": body.get("model", "unknown"),
        "content": content, "stop_reason": "end_turn", "stop_sequence": None, "usage": usage,
    }  # fmt: skip
    return json_response(out, d, request)


async def _stream(
    body: dict[str, Any], mid: str, tokens: int, thinking: int, usage: dict[str, Any], d: dict[str, int]
) -> AsyncIterator[bytes]:
    sent = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sent
        sent += 1
        data = orjson.dumps({"type": kind, **fields})
        return adv.framed(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n", d.get("framing", 0), sent)

    start_usage = {**usage, "output_tokens": 1}
    message = {"id": mid, "type": "message", "role": "assistant", "model": body.get("model", "unknown"),
               "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}  # fmt: skip
    yield event("message_start", message=message)
    yield event("ping")
    if d.get("forge"):
        yield adv.FORGED_COMMENT
    index = 0
    if thinking:
        yield event(
            "content_block_start", index=index, content_block={"type": "thinking", "thinking": "", "signature": ""}
        )
        for _ in range(thinking):
            yield event("content_block_delta", index=index, delta={"type": "thinking_delta", "thinking": "think "})
        yield event("content_block_stop", index=index)
        index += 1
    yield event("content_block_start", index=index, content_block={"type": "text", "text": ""})
    for i in range(tokens):
        if "cut" in d and i == tokens // 2:
            raise RuntimeError("fake upstream cut the stream")
        yield event("content_block_delta", index=index, delta={"type": "text_delta", "text": "tok "})
    yield event("content_block_stop", index=index)
    if "tooluse" in d:
        index += 1
        yield event(
            "content_block_start",
            index=index,
            content_block={"type": "tool_use", "id": "toolu_fake", "name": "lookup", "input": {}},
        )
        yield event(
            "content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": '{"q": "tok"}'}
        )
        yield event("content_block_stop", index=index)
    delta_usage = None if "startonly" in d else {"output_tokens": usage["output_tokens"]}
    yield event("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None}, usage=delta_usage)
    if d.get("forge"):
        yield adv.FORGED_COMMENT
    yield event("message_stop")
