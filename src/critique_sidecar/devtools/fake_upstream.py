"""A small OpenAI-compatible model server for the local stack and the tests.

It answers where real servers answer (vLLM, SGLang, hosted providers): under `/v1/...`, and
with `--api-key` (or FAKE_UPSTREAM_API_KEY) only to `Authorization: Bearer <key>`, 401
otherwise, as vLLM's `--api-key` does.

Behaviour is picked by directives in the last message's content, so the tests drive it
through the real client path (no side channels):
  [[slow:MS]]     wait MS milliseconds between stream chunks (and before a JSON reply)
  [[tokens:N]]    produce N completion tokens (default min(max_tokens, 12))
  [[nousage]]     omit usage (JSON and stream)
  [[cut]]         end the stream abruptly after half the chunks (no [DONE], no usage)
  [[status:N]]    answer with HTTP status N and an OpenAI error body
  [[malformed]]   answer 200 with a body that is not JSON
  [[gzip]]        gzip the response (content-encoding: gzip) when the client accepts it
  [[forcegzip]]   gzip the response even when the client did not ask for it
  [[bigchunk:N]]  each stream chunk carries N bytes of content (for long-stream tests)
  [[usagewithtext]] put the stream's usage on its last text chunk instead of a `choices: []` chunk
Adversarial behaviours (devtools/adversarial.py): [[vllm]], [[overshoot:K]], [[absurd:K]],
[[reasoning]], [[toolcalls]], [[refusal]], [[forge]], [[multiusage]].
Usage is deterministic: prompt_tokens = characters of all message contents // 4 + 1,
completion_tokens = the number of chunks of text produced.
GET /_fake/requests returns the headers and bodies of the last requests seen.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from . import adversarial as adv

_DIRECTIVE = re.compile(r"\[\[(\w+)(?::(\d+))?\]\]")


def _directives(body: dict[str, Any]) -> dict[str, int]:
    messages = body.get("messages") or []
    last = messages[-1].get("content", "") if messages and isinstance(messages[-1], dict) else ""
    return {m.group(1): int(m.group(2) or 1) for m in _DIRECTIVE.finditer(str(last))}


def prompt_tokens(body: dict[str, Any]) -> int:
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []) if isinstance(m, dict))
    return chars // 4 + 1


def build_app(history: int = 200, api_key: str | None = None) -> Starlette:
    seen: deque[dict[str, Any]] = deque(maxlen=history)
    expected = f"Bearer {api_key}" if api_key else None

    def refused(request: Request) -> Response | None:
        if expected is None or request.headers.get("authorization") == expected:
            return None
        return Response(orjson.dumps({"error": "Unauthorized"}), status_code=401, media_type="application/json")

    async def chat(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            seen.append({"headers": dict(request.headers), "body": None, "path": request.url.path, "status": 401})
            return denied
        raw = await request.body()
        body = orjson.loads(raw)
        seen.append({"headers": dict(request.headers), "body": body, "path": request.url.path})
        d = _directives(body)
        model = body.get("model", "unknown")
        if "status" in d:
            err = {"error": {"message": "fake upstream error", "type": "server_error", "code": None, "param": None}}
            return Response(orjson.dumps(err), status_code=d["status"], media_type="application/json")
        if "malformed" in d:
            return Response(b"<html>definitely not json", media_type="application/json")
        n = d.get("tokens", min(body.get("max_tokens") or 12, 12))
        prompt = prompt_tokens(body)
        choices = adv.requested_n(body) if "vllm" in d else 1
        reported = adv.vllm_completion_tokens(body, prompt) * choices if "vllm" in d else n
        reported *= d.get("overshoot", 1)
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": reported,
            "total_tokens": prompt + reported,
        }
        if "absurd" in d:
            usage = adv.absurd_usage(d["absurd"], prompt, reported)
        delay = d.get("slow", 0) / 1000
        piece = "x" * d["bigchunk"] if "bigchunk" in d else "tok "
        kind = adv.delta_kind(d)
        rid, created = f"chatcmpl-fake{time.monotonic_ns()}", int(time.time())
        if body.get("stream"):
            want_usage = bool((body.get("stream_options") or {}).get("include_usage")) and "nousage" not in d
            shape = _Shape(kind, choices, "forge" in d, "multiusage" in d, "usagewithtext" in d)
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
        if "nousage" not in d:
            out["usage"] = usage
        data = orjson.dumps(out)
        if "forcegzip" in d or ("gzip" in d and "gzip" in request.headers.get("accept-encoding", "")):
            return Response(gzip.compress(data), media_type="application/json", headers={"content-encoding": "gzip"})
        return Response(data, media_type="application/json")

    async def requests(request: Request) -> Response:
        return Response(orjson.dumps(list(seen)), media_type="application/json")

    async def models(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        return Response(orjson.dumps({"object": "list", "data": []}), media_type="application/json")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", models),
            Route("/_fake/requests", requests),
        ]
    )


@dataclass(frozen=True, slots=True)
class _Shape:
    """How a stream's events look (adversarial directives; the defaults are a plain stream)."""

    kind: str = "content"
    choices: int = 1
    forge: bool = False
    multiusage: bool = False
    usage_with_text: bool = False  # the usage on the last text chunk, and no usage chunk


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
    def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if extra:
            chunk.update(extra)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    indexes = range(shape.choices)
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
    yield b"data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--api-key", default=os.environ.get("FAKE_UPSTREAM_API_KEY"), help="answer only this bearer key")
    args = p.parse_args(argv)
    app = build_app(api_key=args.api_key or None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
