"""Legacy completions (POST /v1/completions): `choices[].text`, a usage chunk of its own when
`stream_options.include_usage` asks for it, as vLLM answers them. Without `max_tokens` the API
generates 16 tokens at most; `echo` puts the prompt before the text; `best_of` candidates are
generated and `n` returned."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .. import adversarial as adv
from .common import approx_tokens, directives, early_answer, json_response, output_tokens


def prompt_text(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else str(prompt)


async def completions(request: Request, body: dict[str, Any]) -> Response:
    d = directives(prompt_text(body))
    if (early := early_answer(d)) is not None:
        return early
    tokens = output_tokens(d, body, default=16)
    n = adv.requested_n(body)
    best_of = body["best_of"] if isinstance(body.get("best_of"), int) and body["best_of"] > n else n
    prompt = approx_tokens(prompt_text(body))
    # every candidate generated is billed by the server, returned or not
    usage = {"prompt_tokens": prompt, "completion_tokens": tokens * max(n, best_of), "total_tokens": 0}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    echo = prompt_text(body) if body.get("echo") is True else ""
    rid, created, model = f"cmpl-fake{time.monotonic_ns()}", int(time.time()), body.get("model", "unknown")
    if body.get("stream"):
        wants = bool((body.get("stream_options") or {}).get("include_usage")) and "nousage" not in d
        return StreamingResponse(
            _stream(rid, created, model, n, tokens, usage if wants else None, "cut" in d, d.get("framing", 0)),
            media_type="text/event-stream",
        )
    out: dict[str, Any] = {
        "id": rid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": i, "text": echo + "tok " * tokens, "finish_reason": "length", "logprobs": None}
                    for i in range(n)],
    }  # fmt: skip
    if "nousage" not in d:
        out["usage"] = usage
    return json_response(out, d, request)


async def _stream(
    rid: str, created: int, model: str, n: int, tokens: int, usage: dict[str, Any] | None, cut: bool, framing: int
) -> AsyncIterator[bytes]:
    sent = 0

    def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        nonlocal sent
        sent += 1
        chunk = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
        return adv.framed(b"data: " + orjson.dumps({**chunk, **(extra or {})}) + b"\n\n", framing, sent)

    for i in range(tokens):
        if cut and i == tokens // 2:
            raise RuntimeError("fake upstream cut the stream")
        yield event([{"index": c, "text": "tok ", "finish_reason": None, "logprobs": None} for c in range(n)])
    yield event([{"index": c, "text": "", "finish_reason": "length", "logprobs": None} for c in range(n)])
    if usage is not None:
        yield event([], {"usage": usage})
    yield adv.framed(b"data: [DONE]\n\n", framing, sent + 1)
