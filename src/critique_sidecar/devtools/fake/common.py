"""What every API of the fake model server shares: directives read from the request's text,
deterministic token counts, the error and gzip answers."""

from __future__ import annotations

import gzip
import re
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

DIRECTIVE = re.compile(r"\[\[(\w+)(?::(\d+))?\]\]")


def directives(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2) or 1) for m in DIRECTIVE.finditer(text)}


def approx_tokens(text: str) -> int:
    """The fake's deterministic token count of some text: characters // 4 + 1."""
    return len(text) // 4 + 1


def json_response(obj: Any, d: dict[str, int], request: Request) -> Response:
    data = orjson.dumps(obj)
    if "forcegzip" in d or ("gzip" in d and "gzip" in request.headers.get("accept-encoding", "")):
        return Response(gzip.compress(data), media_type="application/json", headers={"content-encoding": "gzip"})
    return Response(data, media_type="application/json")


def early_answer(d: dict[str, int]) -> Response | None:
    """[[status:N]] and [[malformed]]: the answers before any generation."""
    if "status" in d:
        err = {"error": {"message": "fake upstream error", "type": "server_error", "code": None, "param": None}}
        return Response(orjson.dumps(err), status_code=d["status"], media_type="application/json")
    if "malformed" in d:
        return Response(b"<html>definitely not json", media_type="application/json")
    return None


def output_tokens(d: dict[str, int], body: dict[str, Any], field: str = "max_tokens", default: int = 12) -> int:
    """[[tokens:N]], else the request's bound up to `default`."""
    bound = body.get(field)
    return d.get("tokens", min(bound if isinstance(bound, int) and bound > 0 else default, default))
