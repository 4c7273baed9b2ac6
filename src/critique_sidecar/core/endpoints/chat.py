"""OpenAI chat completions: POST /api/v1/chat/completions."""

from __future__ import annotations

from typing import Any

from .. import scopes
from ..tokens import TokenCounts, openai_usage
from . import openai_stream
from .base import (
    Endpoint,
    Limits,
    MeteredBody,
    bad,
    boolean,
    bound_output,
    bounded_input,
    input_estimate,
    load_object,
    model_of,
    openai_end_user,
    positive_int,
)

NAME = "chat.completions"
_METERED = ("model", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n")
_BOUND_FIELDS = ("max_tokens", "max_completion_tokens")


def generations(body: dict[str, Any], max_n: int, name: str = "n") -> int:
    value = body.get(name)
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise bad(f"'{name}' must be a positive integer", name)
    if value > max_n:
        raise bad(f"'{name}' must be at most {max_n}", name)
    return value


def stream_options(body: dict[str, Any], stream: bool) -> tuple[bool, bool]:
    """(the client asked for usage, the body changed): a stream always asks the upstream for
    usage (stream_options.include_usage); the client sees the usage chunk only if it asked."""
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    wants = bool(options and options.get("include_usage") is True)
    if stream and not wants:
        body["stream_options"] = {**(options or {}), "include_usage": True}
        return wants, True
    return wants, False


def parse(raw: bytes, limits: Limits) -> MeteredBody:
    body = load_object(raw, _METERED)
    model, defaulted = model_of(body, limits, NAME)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty array", "messages")
    if not all(isinstance(m, dict) for m in messages):
        raise bad("each message must be an object", "messages")
    stream = boolean(body, "stream")
    wants_usage, options_changed = stream_options(body, stream)
    max_completion = positive_int(body, "max_completion_tokens")
    max_tokens = positive_int(body, "max_tokens")  # validated even when the other one is set
    n = generations(body, limits.max_n)
    per, bound_changed = bound_output(body, _BOUND_FIELDS, max_completion or max_tokens, model)
    if defaulted:
        body["model"] = model.id  # the upstream must see which model it serves
    return MeteredBody(
        model=model,
        end_user=openai_end_user(body),
        stream=stream,
        body=body,
        changed=defaulted or bound_changed or options_changed,
        input_bound=bounded_input(len(raw), messages, model, "messages"),
        input_estimate=input_estimate(len(raw), model),
        per_generation=per,
        generations=n,
        hide_usage=stream and not wants_usage,
        model_defaulted=defaulted,
        capture_input=messages,
    )


def usage(obj: Any) -> TokenCounts | None:
    """`usage` of a chat completion or chunk (prompt_tokens includes cached_tokens;
    completion_tokens includes reasoning_tokens), if well-formed."""
    return openai_usage(obj.get("usage"), "prompt_tokens", "completion_tokens") if isinstance(obj, dict) else None


ENDPOINT = Endpoint(
    name=NAME,
    path="/api/v1/chat/completions",
    suffix="/chat/completions",
    scopes=scopes.CHAT,
    parse=parse,
    json_usage=usage,
    json_output_bytes=openai_stream.choices_bytes,
    json_text=openai_stream.message_text,
    stream_reader=lambda metered: openai_stream.ChoicesStream(usage, metered.hide_usage),
    operation="chat",
)
