"""A small OpenAI-compatible model server for the local stack and the tests.

It answers where real servers answer (vLLM, SGLang, hosted providers): under `/v1/...`
(chat completions, the Responses API, legacy completions, embeddings, Anthropic's Messages;
devtools/fake/ has one module per API), and with `--api-key` (or FAKE_UPSTREAM_API_KEY) only to
`Authorization: Bearer <key>`, 401 otherwise, as vLLM's `--api-key` does.

Behaviour is picked by directives in the request's text (the last message's content, the
prompt, the input), so the tests drive it through the real client path (no side channels):
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
  [[cached:N]]    report N input tokens read from a prompt cache (a part of the input)
Adversarial behaviours (devtools/adversarial.py): [[vllm]], [[overshoot:K]], [[absurd:K]],
[[reasoning]], [[toolcalls]], [[refusal]], [[forge]], [[multiusage]], [[framing:K]], [[dense]];
and, as vLLM, `stream_options.continuous_usage_stats` and `logprobs` / `top_logprobs`.
Usage is deterministic: prompt_tokens = characters of all message contents // 4 + 1,
completion_tokens = the number of chunks of text produced.
GET /_fake/requests returns the headers and bodies of the last requests seen.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .fake.chat import chat, prompt_tokens
from .fake.completions import completions
from .fake.embeddings import embeddings
from .fake.messages import messages
from .fake.responses import responses

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]
APIS: dict[str, Handler] = {
    "/v1/chat/completions": chat,
    "/v1/responses": responses,
    "/v1/completions": completions,
    "/v1/embeddings": embeddings,
    "/v1/messages": messages,
}


def build_app(history: int = 200, api_key: str | None = None) -> Starlette:
    seen: deque[dict[str, Any]] = deque(maxlen=history)
    # Each request's number, counted from the start and never capped like `seen`: a test asks
    # "did anything reach the model server since n" even after `seen` has turned over.
    numbers = itertools.count(1)
    expected = f"Bearer {api_key}" if api_key else None

    def refused(request: Request) -> Response | None:
        if expected is None or request.headers.get("authorization") == expected:
            return None
        return Response(orjson.dumps({"error": "Unauthorized"}), status_code=401, media_type="application/json")

    def served(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if (denied := refused(request)) is not None:
                seen.append(
                    {
                        "n": next(numbers),
                        "headers": dict(request.headers),
                        "body": None,
                        "path": request.url.path,
                        "status": 401,
                    }
                )
                return denied
            body = orjson.loads(await request.body())
            seen.append({"n": next(numbers), "headers": dict(request.headers), "body": body, "path": request.url.path})
            return await handler(request, body)

        return endpoint

    async def requests(request: Request) -> Response:
        return Response(orjson.dumps(list(seen)), media_type="application/json")

    async def models(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        return Response(orjson.dumps({"object": "list", "data": []}), media_type="application/json")

    routes = [Route(path, served(handler), methods=["POST"]) for path, handler in APIS.items()]
    return Starlette(routes=[*routes, Route("/v1/models", models), Route("/_fake/requests", requests)])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--api-key", default=os.environ.get("FAKE_UPSTREAM_API_KEY"), help="answer only this bearer key")
    args = p.parse_args(argv)
    app = build_app(api_key=args.api_key or None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


__all__ = ["build_app", "main", "prompt_tokens"]

if __name__ == "__main__":
    main()
