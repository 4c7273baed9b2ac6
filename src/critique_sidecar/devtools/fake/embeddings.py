"""Embeddings (POST /v1/embeddings): one vector per input, as floats or base64 (little-endian
float32, as OpenAI encodes them); usage is input only."""

from __future__ import annotations

import base64
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .common import approx_tokens, directives, early_answer, json_response

DIMENSIONS = 8


def inputs(body: dict[str, Any]) -> list[Any]:
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


async def embeddings(request: Request, body: dict[str, Any]) -> Response:
    items = inputs(body)
    d = directives(" ".join(str(i) for i in items))
    if (early := early_answer(d)) is not None:
        return early
    size = body["dimensions"] if isinstance(body.get("dimensions"), int) else DIMENSIONS
    data = []
    for index in range(len(items)):
        vector = [round((index + 1) / (k + 2), 6) for k in range(size)]
        encoded: Any = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(i) if isinstance(i, list) else approx_tokens(str(i)) for i in items)
    out: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model", "unknown")}
    if "nousage" not in d:
        out["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response(out, d, request)
