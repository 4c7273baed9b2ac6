"""Chat completions (POST /v1/chat/completions), as vLLM, SGLang and OpenAI answer them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .. import adversarial as adv
from .common import approx_tokens, directives, early_answer, json_response, output_tokens


def last_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return str(messages[-1].get("content", "")) if messages and isinstance(messages[-1], dict) else ""


def prompt_tokens(body: dict[str, Any]) -> int:
    return approx_tokens("".join(str(m.get("content", "")) for m in body.get("messages", []) if isinstance(m, dict)))


async def chat(request: Request, body: dict[str, Any]) -> Response:
    d = directives(last_text(body))
    model = body.get("model", "unknown")
    if (early := early_answer(d)) is not None:
        return early
    n = output_tokens(d, body)
    prompt = prompt_tokens(body)
    choices = adv.requested_n(body) if "vllm" in d else 1
    reported = adv.vllm_completion_tokens(body, prompt) * choices if "vllm" in d else n
    reported *= d.get("overshoot", 1)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": reported,
        "total_tokens": prompt + reported,
    }
    if "cached" in d:  # a prompt-cache hit: a part of prompt_tokens
        usage["prompt_tokens_details"] = {"cached_tokens": min(d["cached"], prompt)}
    if "reasoning" in d:  # reasoning deltas: a part of completion_tokens
        usage["completion_tokens_details"] = {"reasoning_tokens": reported}
    if "absurd" in d:
        usage = adv.absurd_usage(d["absurd"], prompt, reported)
    delay = d.get("slow", 0) / 1000
    piece = "x" * d["bigchunk"] if "bigchunk" in d else (" a" if "dense" in d else "tok ")
    kind = adv.delta_kind(d)
    rid, created = f"chatcmpl-fake{time.monotonic_ns()}", int(time.time())
    if body.get("stream"):
        options = body.get("stream_options") or {}
        want_usage = bool(options.get("include_usage")) and "nousage" not in d
        continuous = want_usage and options.get("continuous_usage_stats") is True
        shape = _Shape(
            kind,
            choices,
            "forge" in d,
            "multiusage" in d,
            "usagewithtext" in d,
            d.get("framing", 0),
            continuous,
            prompt,
        )
        return StreamingResponse(
            _stream(rid, created, model, n, piece, delay, usage if want_usage else None, "cut" in d, shape),
            media_type="text/event-stream",
        )
    if delay:
        await asyncio.sleep(delay)
    out: dict[str, Any] = {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": adv.message(kind, piece * n), "finish_reason": "stop"}
                    for i in range(choices)],
    }  # fmt: skip
    if body.get("logprobs") is True:
        top = body["top_logprobs"] if isinstance(body.get("top_logprobs"), int) else 0
        for choice in out["choices"]:
            choice["logprobs"] = adv.logprobs(n, top)
    if "nousage" not in d:
        out["usage"] = usage
    return json_response(out, d, request)


@dataclass(frozen=True, slots=True)
class _Shape:
    """How a stream's events look (adversarial directives; the defaults are a plain stream)."""

    kind: str = "content"
    choices: int = 1
    forge: bool = False
    multiusage: bool = False
    usage_with_text: bool = False  # the usage on the last text chunk, and no usage chunk
    framing: int = 0  # adversarial.framed's K; 0: `data: ...\n\n`
    continuous: bool = False  # vLLM's continuous_usage_stats: per-choice usage on every chunk
    prompt: int = 0


async def _stream(
    rid: str,
    created: int,
    model: str,
    n: int,
    piece: str,
    delay: float,
    usage: dict[str, Any] | None,
    cut: bool,
    shape: _Shape = _Shape(),
) -> AsyncIterator[bytes]:
    sent = 0

    def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        nonlocal sent
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if extra:
            chunk.update(extra)
        sent += 1
        return adv.framed(b"data: " + orjson.dumps(chunk) + b"\n\n", shape.framing, sent)

    indexes = range(shape.choices)
    if shape.continuous and usage is not None:
        async for out in _continuous(event, n, piece, delay, usage, cut, shape):
            yield out
        return
    yield event([{"index": c, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for c in indexes])
    if shape.multiusage and usage is not None:  # an early, large usage chunk
        yield event([], {"usage": usage})
    if shape.forge:
        yield adv.FORGED_COMMENT
    for i in range(n):
        if cut and i == n // 2:
            raise RuntimeError("fake upstream cut the stream")  # uvicorn drops the connection
        if delay:
            await asyncio.sleep(delay)
        on_text = shape.multiusage or shape.usage_with_text
        extra = {"usage": usage} if on_text and usage is not None and i == n - 1 else None
        yield event(
            [{"index": c, "delta": adv.delta(shape.kind, piece, i), "finish_reason": None} for c in indexes], extra
        )
    yield event([{"index": c, "delta": {}, "finish_reason": "stop"} for c in indexes])
    if usage is not None and not shape.usage_with_text:
        if shape.multiusage:  # a later, smaller one: must not replace the earlier
            small = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
            yield event([], {"usage": small})
        else:
            yield event([], {"usage": usage})
    if shape.forge:
        yield adv.FORGED_COMMENT
    yield adv.framed(b"data: [DONE]\n\n", shape.framing, sent + 1)


async def _continuous(
    event: Any, n: int, piece: str, delay: float, usage: dict[str, Any], cut: bool, shape: _Shape
) -> AsyncIterator[bytes]:
    """vLLM's continuous usage: one choice per chunk, each chunk's usage counting that choice's
    tokens so far; the final usage chunk counts every choice."""

    def so_far(count: int) -> dict[str, Any]:
        return {
            "usage": {"prompt_tokens": shape.prompt, "completion_tokens": count, "total_tokens": shape.prompt + count}
        }

    for c in range(shape.choices):
        yield event([{"index": c, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], so_far(0))
    for i in range(n):
        if cut and i == n // 2:
            raise RuntimeError("fake upstream cut the stream")
        if delay:
            await asyncio.sleep(delay)
        for c in range(shape.choices):
            yield event([{"index": c, "delta": adv.delta(shape.kind, piece, i), "finish_reason": None}], so_far(i + 1))
    for c in range(shape.choices):
        yield event([{"index": c, "delta": {}, "finish_reason": "length"}], so_far(n))
    yield event([], {"usage": usage})
    yield adv.framed(b"data: [DONE]\n\n", shape.framing, 0)
