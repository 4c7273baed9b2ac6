"""OpenAI embeddings: POST /api/v1/embeddings (retrieval pipelines).

Billed on input tokens only (`usage.prompt_tokens`); nothing is generated, so the hold is the
input bound alone and a missing usage is estimated from the body. `input` is a string, a list of
strings, a list of token ids or a list of those; the response (float or base64 vectors) passes
through byte for byte. The API has no stream."""

from __future__ import annotations

from typing import Any

from .. import scopes
from ..tokens import TokenCounts, count
from .base import (
    Endpoint,
    Limits,
    MeteredBody,
    bad,
    input_bound,
    input_estimate,
    load_object,
    model_of,
    openai_end_user,
    text_or_tokens,
)

NAME = "embeddings"
_METERED = ("model", "input", "encoding_format", "dimensions")


def parse(raw: bytes, limits: Limits) -> MeteredBody:
    body = load_object(raw, _METERED)
    model, _ = model_of(body, limits, NAME, required=True)
    if not text_or_tokens(body.get("input")):
        raise bad("'input' must be a string, a list of strings, a list of token ids, or a list of those", "input")
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise bad("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return MeteredBody(
        model=model,
        end_user=openai_end_user(body),
        stream=False,
        body=body,
        changed=False,
        input_bound=input_bound(len(raw), model),
        input_estimate=input_estimate(len(raw), model),
        per_generation=0,
    )


def usage(obj: Any) -> TokenCounts | None:
    """`usage.prompt_tokens` of an embeddings response: input only."""
    u = obj.get("usage") if isinstance(obj, dict) else None
    prompt = count(u.get("prompt_tokens")) if isinstance(u, dict) else None
    return None if prompt is None else TokenCounts(prompt, 0)


ENDPOINT = Endpoint(
    name=NAME,
    path="/api/v1/embeddings",
    suffix="/embeddings",
    scopes=scopes.CHAT,
    parse=parse,
    json_usage=usage,
    json_output_bytes=lambda obj: 0,
    json_text=lambda obj: None,
    stream_reader=None,
    operation="embeddings",
)
