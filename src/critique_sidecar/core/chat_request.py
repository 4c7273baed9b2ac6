"""Parse a chat-completions request body: only the fields metering needs."""

from __future__ import annotations

import json
import re
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
    max_output_tokens: int  # what the hold reserves for output: per_choice_output_tokens * n
    input_token_bound: int  # upper bound on input tokens (see input_token_bound())
    input_token_estimate: int  # a typical-case estimate, for settling without usage
    model_defaulted: bool  # the client sent no model; the catalog default was filled in
    body: dict[str, Any]
    n: int = 1  # choices the upstream generates
    per_choice_output_tokens: int = 0  # the output bound the upstream receives (see bound_output())
    bound_rewritten: bool = False  # the body's output bound was clamped or inserted


def input_token_bound(body_len: int, model: Model) -> int:
    """Byte-level BPE tokenizers emit at most one token per UTF-8 byte, so the body length
    (plus template overhead) bounds the input tokens; a hold built on it is never short."""
    return min(body_len + _TEMPLATE_OVERHEAD_TOKENS, model.context_window)


def estimate_tokens(text_bytes: int) -> int:
    """Typical-case estimate (~4 bytes per token), used only when usage is missing."""
    return (text_bytes + 3) // 4


def input_token_estimate(body_len: int, model: Model) -> int:
    """The input estimate for settling without usage: the whole body (messages of every kind,
    tools, tool results) at ~4 bytes per token, plus template overhead, within the bound."""
    return min(estimate_tokens(body_len) + _TEMPLATE_OVERHEAD_TOKENS, input_token_bound(body_len, model))


def _bad(message: str, param: str | None) -> ApiError:
    return ApiError("invalid_request", message, param=param)


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad(f"'{name}' must be a positive integer", name)
    return value


# The fields we bill by. A body naming one twice is refused: we would bill the last value while
# a model server reading the first could serve something else (another model, more tokens).
_METERED_FIELDS = ("model", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n")
_METERED_NEEDLES = tuple(f'"{name}"'.encode() for name in _METERED_FIELDS)
# A \u escape of an ASCII letter or '_' can spell a metered name without its literal bytes
# ("max_tok\u0065ns"): such bodies always get the exact check.
_ESCAPED_NAME_CHAR = re.compile(rb"\\u00[5-7][0-9a-fA-F]")
# Deeper bodies are refused: the upstream body is re-encoded (orjson stops at 255 levels), and
# no chat request needs more.
MAX_NESTING = 128


def _refuse_duplicate_metered_fields(raw: bytes) -> None:
    # Fast path: a C-speed scan; only bodies where a name appears twice, or that escape a
    # letter, get the exact check (top-level keys only: the same words inside messages are fine).
    if all(raw.count(needle) < 2 for needle in _METERED_NEEDLES) and not _ESCAPED_NAME_CHAR.search(raw):
        return
    seen: list[str] = []

    def top_level(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen[:] = [k for k, _ in pairs]  # the outermost object is decoded last
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=top_level)
    except RecursionError:
        raise _too_deep() from None
    for name in _METERED_FIELDS:
        if seen.count(name) > 1:
            raise _bad(f"'{name}' appears more than once in the request body", name)


def _too_deep() -> ApiError:
    return _bad(f"request body is nested more than {MAX_NESTING} levels deep", None)


def _refuse_deep_nesting(raw: bytes, body: Any) -> None:
    # Only bodies with enough brackets to be that deep are walked (a C-speed count first).
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise _too_deep()
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))


def _choices(body: dict[str, Any], max_n: int) -> int:
    value = body.get("n")
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad("'n' must be a positive integer", "n")
    if value > max_n:
        raise _bad(f"'n' must be at most {max_n}", "n")
    return value


_BOUND_FIELDS = ("max_completion_tokens", "max_tokens")


def bound_output(body: dict[str, Any], per_choice: int) -> bool:
    """Make the body carry the output bound the hold assumed: every bound field the client sent
    is clamped to `per_choice`; without one, `max_tokens` is inserted. True when it changed."""
    sent = [name for name in _BOUND_FIELDS if body.get(name) is not None]
    if not sent:
        body["max_tokens"] = per_choice
        return True
    changed = False
    for name in sent:
        if body[name] > per_choice:
            body[name] = per_choice
            changed = True
    return changed


def parse_chat_request(raw: bytes, catalog: Catalog, max_n: int = 8) -> ChatRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad("request body is not valid JSON", None) from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", None)
    _refuse_deep_nesting(raw, body)
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
    n = _choices(body, max_n)
    requested = max_completion or max_tokens
    default_out = model.default_output_tokens or model.max_output_tokens
    per_choice = min(requested or default_out, model.max_output_tokens)
    rewritten = bound_output(body, per_choice)  # the upstream gets the bound the hold assumes

    if model_defaulted:
        body["model"] = model_id  # the upstream must see which model it serves

    return ChatRequest(
        model=model,
        stream=stream,
        client_wants_usage=wants_usage,
        max_output_tokens=per_choice * n,
        input_token_bound=input_token_bound(len(raw), model),
        input_token_estimate=input_token_estimate(len(raw), model),
        model_defaulted=model_defaulted,
        body=body,
        n=n,
        per_choice_output_tokens=per_choice,
        bound_rewritten=rewritten,
    )


def upstream_body(req: ChatRequest) -> bytes | None:
    """The body to send upstream, or None when the original can go unchanged.

    Streams always ask the upstream for usage (stream_options.include_usage), a filled-in
    default model is written into the body, and so is the clamped or inserted output bound."""
    changed = req.model_defaulted or req.bound_rewritten
    if req.stream and not req.client_wants_usage:
        options = dict(req.body.get("stream_options") or {})
        options["include_usage"] = True
        req.body["stream_options"] = options
        changed = True
    return orjson.dumps(req.body) if changed else None
