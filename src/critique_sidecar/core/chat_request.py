"""Parse a chat-completions request body: only the fields metering needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

from .catalog import Catalog, Model
from .errors import ApiError

# Tokens added by chat templates per request; keeps the input bound safe for tiny bodies.
_TEMPLATE_OVERHEAD_TOKENS = 16


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: Model
    stream: bool
    client_wants_usage: bool  # stream_options.include_usage as the client sent it
    max_output_tokens: int  # what the hold reserves for output
    input_token_bound: int  # upper bound on input tokens (see input_token_bound())
    input_token_estimate: int  # a typical-case estimate, for settling without usage
    model_defaulted: bool  # the client sent no model; the catalog default was filled in
    body: dict[str, Any]


def input_token_bound(body_len: int, model: Model) -> int:
    """Byte-level BPE tokenizers emit at most one token per UTF-8 byte, so the body length
    (plus template overhead) bounds the input tokens; a hold built on it is never short."""
    return min(body_len + _TEMPLATE_OVERHEAD_TOKENS, model.context_window)


def estimate_tokens(text_bytes: int) -> int:
    """Typical-case estimate (~4 bytes per token), used only when usage is missing."""
    return (text_bytes + 3) // 4


def _bad(message: str, param: str | None) -> ApiError:
    return ApiError("invalid_request", message, param=param)


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad(f"'{name}' must be a positive integer", name)
    return value


def _message_text_bytes(messages: list[Any]) -> int:
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            total += len(content.encode("utf-8", "replace"))
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].encode("utf-8", "replace"))
    return total


# The fields we bill by. A body naming one twice is refused: we would bill the last value while
# a model server reading the first could serve something else (another model, more tokens).
_METERED_FIELDS = ("model", "max_tokens", "max_completion_tokens", "stream", "stream_options")
_METERED_NEEDLES = tuple(f'"{name}"'.encode() for name in _METERED_FIELDS)


def _refuse_duplicate_metered_fields(raw: bytes) -> None:
    # Fast path: a C-speed scan; only bodies where a name appears twice get the slow check
    # (which looks at top-level keys only: the same words inside messages are fine).
    if all(raw.count(needle) < 2 for needle in _METERED_NEEDLES):
        return
    seen: list[str] = []

    def top_level(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen[:] = [k for k, _ in pairs]  # the outermost object is decoded last
        return dict(pairs)

    json.loads(raw, object_pairs_hook=top_level)
    for name in _METERED_FIELDS:
        if seen.count(name) > 1:
            raise _bad(f"'{name}' appears more than once in the request body", name)


def parse_chat_request(raw: bytes, catalog: Catalog) -> ChatRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("request body is not valid JSON", None) from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", None)
    _refuse_duplicate_metered_fields(raw)

    model_defaulted = body.get("model") is None
    model_id = catalog.default_model if model_defaulted else body["model"]
    if not isinstance(model_id, str):
        raise _bad("'model' must be a string", "model")
    model = catalog.model(model_id)
    if model is None:
        raise ApiError("model_not_found", f"The model '{model_id[:200]}' does not exist", param="model")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise _bad("each message must be an object", "messages")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream")

    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    wants_usage = bool(options and options.get("include_usage") is True)

    max_completion = _positive_int(body, "max_completion_tokens")
    max_tokens = _positive_int(body, "max_tokens")  # validated even when the other one is set
    requested = max_completion or max_tokens
    max_out = min(requested or model.max_output_tokens, model.max_output_tokens)

    if model_defaulted:
        body["model"] = model_id  # the upstream must see which model it serves

    return ChatRequest(
        model=model,
        stream=stream,
        client_wants_usage=wants_usage,
        max_output_tokens=max_out,
        input_token_bound=input_token_bound(len(raw), model),
        input_token_estimate=estimate_tokens(_message_text_bytes(messages)) + _TEMPLATE_OVERHEAD_TOKENS,
        model_defaulted=model_defaulted,
        body=body,
    )


def upstream_body(req: ChatRequest) -> bytes | None:
    """The body to send upstream, or None when the original can go unchanged.

    Streams always ask the upstream for usage (stream_options.include_usage), and a filled-in
    default model is written into the body."""
    changed = req.model_defaulted
    if req.stream and not req.client_wants_usage:
        options = dict(req.body.get("stream_options") or {})
        options["include_usage"] = True
        req.body["stream_options"] = options
        changed = True
    return orjson.dumps(req.body) if changed else None
