"""A small OpenAI-compatible model server for the local stack and the tests.

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
Usage is deterministic: prompt_tokens = characters of all message contents // 4 + 1,
completion_tokens = the number of chunks of text produced.
GET /_fake/requests returns the headers and bodies of the last requests seen.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

_DIRECTIVE = re.compile(r"\[\[(\w+)(?::(\d+))?\]\]")


def _directives(body: dict[str, Any]) -> dict[str, int]:
    messages = body.get("messages") or []
    last = messages[-1].get("content", "") if messages and isinstance(messages[-1], dict) else ""
    return {m.group(1): int(m.group(2) or 1) for m in _DIRECTIVE.finditer(str(last))}


def prompt_tokens(body: dict[str, Any]) -> int:
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []) if isinstance(m, dict))
    return chars // 4 + 1


def build_app(history: int = 200) -> Starlette:
    seen: deque[dict[str, Any]] = deque(maxlen=history)

    async def chat(request: Request) -> Response:
        raw = await request.body()
        body = orjson.loads(raw)
        seen.append({"headers": dict(request.headers), "body": body})
        d = _directives(body)
        model = body.get("model", "unknown")
        if "status" in d:
            err = {"error": {"message": "fake upstream error", "type": "server_error", "code": None, "param": None}}
            return Response(orjson.dumps(err), status_code=d["status"], media_type="application/json")
        if "malformed" in d:
            return Response(b"<html>definitely not json", media_type="application/json")
        n = d.get("tokens", min(body.get("max_tokens") or 12, 12))
        usage = {"prompt_tokens": prompt_tokens(body), "completion_tokens": n, "total_tokens": prompt_tokens(body) + n}
        delay = d.get("slow", 0) / 1000
        piece = "x" * d["bigchunk"] if "bigchunk" in d else "tok "
        rid, created = f"chatcmpl-fake{time.monotonic_ns()}", int(time.time())
        if body.get("stream"):
            want_usage = bool((body.get("stream_options") or {}).get("include_usage")) and "nousage" not in d
            return StreamingResponse(
                _stream(rid, created, model, n, piece, delay, usage if want_usage else None, "cut" in d),
                media_type="text/event-stream",
            )
        if delay:
            await asyncio.sleep(delay)
        out: dict[str, Any] = {
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": piece * n}, "finish_reason": "stop"}],
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
        return Response(orjson.dumps({"object": "list", "data": []}), media_type="application/json")

    return Starlette(
        routes=[
            Route("/api/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/api/v1/models", models),
            Route("/_fake/requests", requests),
        ]
    )


async def _stream(
    rid: str, created: int, model: str, n: int, piece: str, delay: float, usage: dict[str, int] | None, cut: bool
) -> AsyncIterator[bytes]:
    def event(choices: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if extra:
            chunk.update(extra)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    for i in range(n):
        if cut and i == n // 2:
            raise RuntimeError("fake upstream cut the stream")  # uvicorn drops the connection
        if delay:
            await asyncio.sleep(delay)
        yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
    yield event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    if usage is not None:
        yield event([], {"usage": usage})
    yield b"data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    args = p.parse_args(argv)
    uvicorn.run(build_app(), host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
