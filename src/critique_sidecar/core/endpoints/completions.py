"""OpenAI's legacy completions: POST /api/v1/completions (evaluation harnesses score with it).

`prompt` is a string, a list of strings, a list of token ids or a list of those; the body's bytes
bound its tokens as for chat (a token id takes at least a byte). The server generates `best_of`
candidates and returns `n` of them: the hold counts the larger, times the output bound. Without a
`max_tokens` the API's own default (16) is what the server generates, and what is inserted.
Usage, streams and the estimate are chat's (`choices[].text`, a usage chunk of its own)."""

from __future__ import annotations

from .. import scopes
from . import chat, openai_stream
from .base import (
    Endpoint,
    Limits,
    MeteredBody,
    bad,
    boolean,
    bound_output,
    input_bound,
    input_estimate,
    load_object,
    model_of,
    openai_end_user,
    positive_int,
    text_or_tokens,
)

NAME = "completions"
_METERED = ("model", "max_tokens", "stream", "stream_options", "n", "best_of", "echo")
API_DEFAULT_MAX_TOKENS = 16  # what OpenAI and vLLM generate when a completions request names no bound


def parse(raw: bytes, limits: Limits) -> MeteredBody:
    body = load_object(raw, _METERED)
    model, defaulted = model_of(body, limits, NAME)
    if not text_or_tokens(body.get("prompt")):
        raise bad("'prompt' must be a string, a list of strings, a list of token ids, or a list of those", "prompt")
    stream = boolean(body, "stream")
    wants_usage, options_changed = chat.stream_options(body, stream)
    n = chat.generations(body, limits.max_n)
    best_of = chat.generations(body, limits.max_n, "best_of")
    if body.get("best_of") is not None and best_of < n:
        raise bad("'best_of' must be at least 'n'", "best_of")
    if stream and best_of > 1 and body.get("best_of") is not None:
        raise bad("'best_of' cannot be streamed", "best_of")
    requested = positive_int(body, "max_tokens")
    per, bound_changed = bound_output(body, ("max_tokens",), requested or API_DEFAULT_MAX_TOKENS, model)
    if defaulted:
        body["model"] = model.id
    return MeteredBody(
        model=model,
        end_user=openai_end_user(body),
        stream=stream,
        body=body,
        changed=defaulted or bound_changed or options_changed,
        input_bound=input_bound(len(raw), model),
        input_estimate=input_estimate(len(raw), model),
        per_generation=per,
        generations=max(n, best_of),
        hide_usage=stream and not wants_usage,
        model_defaulted=defaulted,
        capture_input=body.get("prompt"),
    )


ENDPOINT = Endpoint(
    name=NAME,
    path="/api/v1/completions",
    suffix="/completions",
    scopes=scopes.CHAT,
    parse=parse,
    json_usage=chat.usage,
    json_output_bytes=openai_stream.choices_bytes,
    json_text=openai_stream.message_text,
    stream_reader=lambda metered: openai_stream.ChoicesStream(chat.usage, metered.hide_usage),
    operation="text_completion",
)
