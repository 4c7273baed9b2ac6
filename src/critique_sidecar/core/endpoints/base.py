"""What an endpoint is: a definition the exchange, both front doors and the Envoy config read.

An endpoint says
  - where it is: its product path and the suffix appended to a model server's base URL;
  - who may call it: the scopes, and which headers may carry the client's key;
  - how its request body bounds the hold: `parse` turns the body into a `MeteredBody` (the
    model, the input bound, the output bound the upstream receives times the generations it
    asks for), clamping or inserting the output bound in the body the upstream gets;
  - where usage lives: in a JSON response (`json_usage`) and in a stream's events (its
    `StreamReader`); what counts as generated output when usage is missing;
  - its error shape (OpenAI's or Anthropic's).

Adding an endpoint is one module defining an `Endpoint` and one line in the registry
(core/endpoints/__init__.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .. import end_user
from ..catalog import Catalog, MediaKind, Model
from ..errors import ApiError
from ..tokens import TokenCounts

# Tokens a chat template adds per request; keeps the input bound safe for tiny bodies.
TEMPLATE_OVERHEAD_TOKENS = 16
MAX_KEPT_TEXT_BYTES = 4 << 20  # an opted-in stream longer than this is not captured
# Deeper bodies are refused: the upstream body is re-encoded (orjson stops at 255 levels), and
# no inference request needs more.
MAX_NESTING = 128


@dataclass(frozen=True, slots=True)
class Limits:
    """What parsing needs besides the body."""

    catalog: Catalog
    max_n: int = 8


@dataclass(slots=True)
class MeteredBody:
    """A request body as the meter sees it, and the body the upstream gets."""

    model: Model
    stream: bool
    body: dict[str, Any]  # the upstream's body (bound clamped or inserted, defaults filled in)
    changed: bool  # body differs from what the client sent: re-encode it
    input_bound: int  # upper bound on input tokens, every kind
    input_estimate: int  # a typical-case estimate, for settling without usage
    per_generation: int  # the output bound the upstream receives
    generations: int = 1  # outputs the upstream generates (n, best_of)
    hide_usage: bool = False  # stream: the client did not ask for the usage we asked for
    model_defaulted: bool = False
    capture_input: Any = None  # what the training capture keeps of the request (opt-in only)
    end_user: str = ""  # the end user the body names (core/end_user.py); "" when none

    @property
    def output_bound(self) -> int:
        """What the hold reserves for output: the upstream's bound times its generations."""
        return self.per_generation * self.generations


# -- a stream's events --------------------------------------------------------------------

KEEP = 0  # forward the event as it came
DROP = 1  # never forward it (usage the client did not ask for)
TERMINAL = 2  # the API's last event: held until the stream is settled; the charge goes first


@dataclass(slots=True)
class StreamTally:
    """What a stream's events told the meter so far."""

    usage: TokenCounts | None = None  # the best usage reported (largest total)
    final: bool = False  # the stream's own end-of-stream usage was seen
    output_bytes: int = 0  # UTF-8 bytes of generated output delivered
    text_events: int = 0  # outputs (choices, content blocks) that carried generated text, per event
    text: list[str] | None = None  # kept for the training capture (opted-in streams only)
    kept_bytes: int = 0

    def report(self, usage: TokenCounts | None, final: bool = False) -> None:
        """A usage seen in the stream: the largest total wins (counts are cumulative, so for an
        honest server the last); a later, smaller one never replaces it."""
        if usage is not None:
            if self.usage is None or usage.total > self.usage.total:
                self.usage = usage
            self.final = self.final or final

    def delivered(self, nbytes: int, outputs: int = 1) -> None:
        """Generated output passed to the client: `nbytes` over `outputs` choices or blocks."""
        if nbytes > 0:
            self.output_bytes += nbytes
            self.text_events += outputs

    def keep(self, pieces: Iterable[str]) -> None:
        if self.text is None:
            return
        for piece in pieces:
            self.kept_bytes += len(piece)
            if self.kept_bytes > MAX_KEPT_TEXT_BYTES:
                self.text = None  # too long to capture: stop keeping it (bounded memory)
                return
            self.text.append(piece)


class StreamReader(Protocol):
    def event(self, name: bytes | None, data: bytes, tally: StreamTally) -> int | bytes:
        """One event's `event:` name (None when absent) and joined `data:`; KEEP, DROP, TERMINAL,
        or the data to forward in its place."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # the operation: "chat.completions", ...; metrics, traces and records use it
    path: str  # the product path, e.g. /api/v1/chat/completions
    suffix: str  # appended to a model server's base URL: /chat/completions
    scopes: frozenset[str]
    parse: Callable[[bytes, Limits], MeteredBody]
    json_usage: Callable[[Any], TokenCounts | None]
    json_output_bytes: Callable[[Any], int]  # generated bytes of a JSON response (the estimate)
    json_text: Callable[[Any], str | None]  # the completion text, for the training capture
    stream_reader: Callable[[MeteredBody], StreamReader] | None  # None: the endpoint never streams
    error_shape: str = "openai"
    key_headers: tuple[str, ...] = ("authorization",)  # headers that may carry the client's key
    operation: str = "chat"  # gen_ai.operation.name (OpenTelemetry's GenAI conventions)
    extra: dict[str, Any] = field(default_factory=dict)


def client_key(headers: Any, key_headers: tuple[str, ...]) -> str | None:
    """The client's key as an Authorization value, from whichever of the key headers carry it
    (x-api-key holds the bare key); two that disagree are no key at all (a 401)."""
    values = {headers[h] if h == "authorization" else f"Bearer {headers[h]}" for h in key_headers if h in headers}
    if not values:
        return None
    return values.pop() if len(values) == 1 else ""


def read_json(endpoint: Endpoint, body: bytes) -> tuple[Any, TokenCounts | None, int]:
    """(the object, its usage, its generated bytes) of a non-streaming response. A body that is
    not JSON at all counts whole as delivered output; JSON without usage counts its output."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, len(body)
    return obj, endpoint.json_usage(obj), endpoint.json_output_bytes(obj)


# -- parsing helpers every endpoint uses --------------------------------------------------


def bad(message: str, param: str | None = None) -> ApiError:
    return ApiError("invalid_request", message, param=param)


# The OpenAI APIs' end-user fields, the preferred first (`user` is the older, deprecated name).
# Not among an endpoint's metered fields (named twice, the last is attributed): the id is the
# client's own claim and bills nothing, and `"user"` is in nearly every chat body as a role, so
# checking it would put every multi-turn request on the slow exact parse.
OPENAI_END_USER = ("safety_identifier", "user")


def openai_end_user(body: dict[str, Any]) -> str:
    """The end user an OpenAI body names (core/end_user.py): `safety_identifier`, else `user`."""
    return end_user.from_body(body, *OPENAI_END_USER)


def too_deep() -> ApiError:
    return bad(f"request body is nested more than {MAX_NESTING} levels deep")


def load_object(raw: bytes, metered_fields: tuple[str, ...]) -> dict[str, Any]:
    """The body as a JSON object, refused when not one, too deep, or naming a metered field
    twice (we would bill the last value while a model server reading the first could serve
    something else)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad("request body must be a JSON object")
    _refuse_deep_nesting(raw, body)
    _refuse_duplicates(raw, metered_fields)
    return body


# A \u escape of an ASCII letter or '_' can spell a metered name without its literal bytes
# ("max_tok\u0065ns"): such bodies always get the exact check.
_ESCAPED_NAME_CHAR = re.compile(rb"\\u00[5-7][0-9a-fA-F]")


def _refuse_duplicates(raw: bytes, names: tuple[str, ...]) -> None:
    # Fast path: a C-speed scan; only bodies where a name appears twice, or that escape a
    # letter, get the exact check (top-level keys only: the same words inside messages are fine).
    needles = [f'"{name}"'.encode() for name in names]
    if all(raw.count(n) < 2 for n in needles) and not _ESCAPED_NAME_CHAR.search(raw):
        return
    seen: list[str] = []

    def top_level(pairs: list[tuple[str, object]]) -> dict[str, object]:
        seen[:] = [k for k, _ in pairs]  # the outermost object is decoded last
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=top_level)
    except RecursionError:
        raise too_deep() from None
    for name in names:
        if seen.count(name) > 1:
            raise bad(f"'{name}' appears more than once in the request body", name)


def _refuse_deep_nesting(raw: bytes, body: Any) -> None:
    # Only bodies with enough brackets to be that deep are walked (a C-speed count first).
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise too_deep()
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))


def model_of(body: dict[str, Any], limits: Limits, endpoint: str, required: bool = False) -> tuple[Model, bool]:
    """The catalog model the body names (the catalog's default when it names none and the API
    allows that), and whether it was defaulted. 404 for an unknown model, or one that does not
    serve this endpoint."""
    value = body.get("model")
    if value is None:
        if required:
            raise bad("'model' is required", "model")
        model = limits.catalog.model(limits.catalog.default_model)
        assert model is not None  # the catalog checks its default exists
        defaulted = True
    elif not isinstance(value, str):
        raise bad("'model' must be a string", "model")
    else:
        found = limits.catalog.model(value)
        if found is None:
            raise ApiError("model_not_found", f"The model '{value[:200]}' does not exist", param="model")
        model, defaulted = found, False
    if endpoint not in model.endpoints:
        raise ApiError(
            "model_not_found",
            f"The model '{model.id}' does not serve {endpoint}; it serves {', '.join(model.endpoints)}",
            param="model",
        )
    return model, defaulted


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(i) is int and i >= 0 for i in value)


def text_or_tokens(value: Any) -> bool:
    """A string, a list of strings, a list of token ids or a list of those (legacy completions'
    `prompt`, embeddings' `input`)."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list) or not value:
        return False
    return all(isinstance(v, str) for v in value) or _token_ids(value) or all(_token_ids(v) for v in value)


def boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"'{name}' must be a boolean", name)
    return value


def positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise bad(f"'{name}' must be a positive integer", name)
    return value


def bound_output(
    body: dict[str, Any], fields: tuple[str, ...], requested: int | None, model: Model
) -> tuple[int, bool]:
    """The output bound the upstream receives, and whether the body changed: every bound field
    the client sent is clamped to the model's budget; without one, the first field is inserted
    (the model's default_output_tokens, else its budget)."""
    per = min(requested or model.default_output_tokens or model.max_output_tokens, model.max_output_tokens)
    sent = [name for name in fields if body.get(name) is not None]
    if not sent:
        body[fields[0]] = per
        return per, True
    changed = False
    for name in sent:
        if body[name] > per:
            body[name] = per
            changed = True
    return per, changed


def input_bound(body_len: int, model: Model) -> int:
    """Byte-level BPE tokenizers emit at most one token per UTF-8 byte, so the body length
    (plus template overhead) bounds the input tokens; a hold built on it is never short."""
    return min(body_len + TEMPLATE_OVERHEAD_TOKENS, model.context_window)


def estimate_tokens(nbytes: int) -> int:
    """Typical-case estimate (~4 bytes per token), used only when usage is missing."""
    return (nbytes + 3) // 4


def input_estimate(body_len: int, model: Model) -> int:
    """The input estimate for settling without usage: the whole body at ~4 bytes per token,
    plus template overhead, within the bound."""
    return min(estimate_tokens(body_len) + TEMPLATE_OVERHEAD_TOKENS, input_bound(body_len, model))


# Content part types whose tokens the body's bytes do not bound: a small image can be many
# tokens, a file or a URL is not in the body at all. Names across the APIs (OpenAI chat and
# Responses, Anthropic Messages, vLLM's extensions).
MEDIA_PARTS: dict[str, MediaKind] = {
    "image_url": "image",
    "input_image": "image",
    "image": "image",
    "input_audio": "audio",
    "audio_url": "audio",
    "file": "file",
    "input_file": "file",
    "document": "file",
    "video_url": "video",
}


def media_in(node: Any) -> dict[MediaKind, int]:
    """Media items anywhere in a request's content: kind -> count (an iterative walk)."""
    found: dict[MediaKind, int] = {}
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            kind_name = item.get("type")
            kind = MEDIA_PARTS.get(kind_name) if isinstance(kind_name, str) else None
            if kind is not None:
                found[kind] = found.get(kind, 0) + 1
            stack.extend(v for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))
    return found


def bounded_input(raw_len: int, content: Any, model: Model, param: str) -> int:
    """The input bound of a request whose content may hold media: the body's bytes, plus each
    item's declared bound where the catalog gives one; the model's whole context window when an
    item has none. A kind the model does not take is a 400."""
    media = media_in(content) if content is not None else {}
    bound = input_bound(raw_len, model)
    for kind, n in media.items():
        if model.inputs is not None and kind not in model.inputs:
            raise bad(f"The model '{model.id}' does not take {kind} input; it takes {', '.join(model.inputs)}", param)
        per_item = model.input_item_tokens.get(kind)
        if per_item is None:
            return model.context_window  # unbounded by the body: hold the whole window
        bound += n * per_item
    return min(bound, model.context_window)
