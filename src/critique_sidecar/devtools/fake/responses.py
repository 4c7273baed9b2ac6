"""The Responses API (POST /v1/responses), as OpenAI and vLLM answer it: a response object with
`output` items and `usage` (input_tokens with its cached part, output_tokens with its reasoning
part); streamed as `event:` + `data:` pairs ending with `response.completed` (or, with
[[incomplete]], `response.incomplete`). [[reasoning]] adds a reasoning item; [[cached:N]] reports
N input tokens read from a cache; [[cut]] breaks the stream off halfway."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .. import adversarial as adv
from .common import approx_tokens, directives, early_answer, json_response, output_tokens


def input_text(body: dict[str, Any]) -> str:
    value = body.get("input")
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _response(body: dict[str, Any], rid: str, status: str, output: list[dict[str, Any]], usage: Any) -> dict[str, Any]:
    return {
        "id": rid, "object": "response", "created_at": int(time.time()), "status": status,
        "model": body.get("model", "unknown"), "output": output, "usage": usage, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "store": body.get("store", True),
        "temperature": 1.0, "top_p": 1.0, "text": {"format": {"type": "text"}}, "metadata": {},
    }  # fmt: skip


def _message(text: str) -> dict[str, Any]:
    return {
        "type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }  # fmt: skip


def _reasoning(text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": "rs_fake", "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


async def responses(request: Request, body: dict[str, Any]) -> Response:
    d = directives(input_text(body))
    if (early := early_answer(d)) is not None:
        return early
    tokens = output_tokens(d, body, "max_output_tokens")
    prompt = approx_tokens(input_text(body) + str(body.get("instructions") or ""))
    reasoning = tokens if "reasoning" in d else 0
    usage: Any = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": min(d.get("cached", 0), prompt)},
        "output_tokens": tokens + reasoning,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + tokens + reasoning,
    }
    if "absurd" in d:
        absurd = adv.absurd_usage(d["absurd"], prompt, tokens)
        usage = {"input_tokens": absurd.get("prompt_tokens"), "output_tokens": absurd.get("completion_tokens")}
    if "nousage" in d:
        usage = None
    status = "incomplete" if "incomplete" in d else "completed"
    rid = f"resp_fake{time.monotonic_ns()}"
    if body.get("stream"):
        return StreamingResponse(
            _stream(body, rid, status, tokens, reasoning, usage, d), media_type="text/event-stream"
        )
    output = ([_reasoning("think " * reasoning)] if reasoning else []) + [_message("tok " * tokens)]
    return json_response(_response(body, rid, status, output, usage), d, request)


async def _stream(
    body: dict[str, Any], rid: str, status: str, tokens: int, reasoning: int, usage: Any, d: dict[str, int]
) -> AsyncIterator[bytes]:
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        sequence += 1
        data = orjson.dumps({"type": kind, "sequence_number": sequence, **fields})
        return adv.framed(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n", d.get("framing", 0), sequence)

    yield event("response.created", response=_response(body, rid, "in_progress", [], None))
    yield event("response.in_progress", response=_response(body, rid, "in_progress", [], None))
    if d.get("forge"):
        yield adv.FORGED_COMMENT
    output: list[dict[str, Any]] = []
    if reasoning:
        yield event(
            "response.output_item.added", output_index=0, item={"type": "reasoning", "id": "rs_fake", "summary": []}
        )
        for _ in range(reasoning):
            yield event(
                "response.reasoning_text.delta", item_id="rs_fake", output_index=0, content_index=0, delta="think "
            )
        output.append(_reasoning("think " * reasoning))
    index = len(output)
    yield event(
        "response.output_item.added", output_index=index, item={**_message(""), "status": "in_progress", "content": []}
    )
    yield event("response.content_part.added", item_id="msg_fake", output_index=index, content_index=0,
                part={"type": "output_text", "text": "", "annotations": []})  # fmt: skip
    for i in range(tokens):
        if "cut" in d and i == tokens // 2:
            raise RuntimeError("fake upstream cut the stream")
        yield event("response.output_text.delta", item_id="msg_fake", output_index=index, content_index=0, delta="tok ")
    text = "tok " * tokens
    yield event("response.output_text.done", item_id="msg_fake", output_index=index, content_index=0, text=text)
    output.append(_message(text))
    yield event("response.output_item.done", output_index=index, item=_message(text))
    if d.get("forge"):
        yield adv.FORGED_COMMENT
    final = "response.incomplete" if status == "incomplete" else "response.completed"
    yield event(final, response=_response(body, rid, status, output, usage))
