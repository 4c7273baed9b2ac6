"""core/endpoints/chat.py: validating a chat-completions body and preparing the upstream body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from critique_sidecar.core.catalog import Catalog, load_catalog
from critique_sidecar.core.endpoints import chat
from critique_sidecar.core.endpoints.base import Limits, MeteredBody, estimate_tokens
from critique_sidecar.core.errors import ApiError

DEEPSEEK = "deepseek/deepseek-v4-flash"
TENCENT = "tencent/hy3-preview"
MESSAGES = [{"role": "user", "content": "Summarize this retry policy in three bullets."}]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def body(**fields: Any) -> bytes:
    fields.setdefault("messages", MESSAGES)
    return orjson.dumps({k: v for k, v in fields.items() if v is not _OMIT})


_OMIT = object()


def parse(catalog: Catalog, raw: bytes) -> MeteredBody:
    return chat.parse(raw, Limits(catalog))


def parse_chat_request(raw: bytes, catalog: Catalog) -> MeteredBody:
    return parse(catalog, raw)


def upstream_body(req: MeteredBody) -> bytes | None:
    """The body the upstream gets, or None when the client's goes unchanged."""
    return orjson.dumps(req.body) if req.changed else None


def bad(catalog: Catalog, raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as err:
        parse(catalog, raw)
    return err.value


# --- valid requests ----------------------------------------------------------------------------


def test_quickstart_request(catalog: Catalog) -> None:
    raw = body(model=DEEPSEEK)
    req = parse(catalog, raw)
    assert req.model.id == DEEPSEEK
    assert req.stream is False
    assert req.hide_usage is False
    assert req.model_defaulted is False
    assert req.output_bound == req.model.max_output_tokens == 32_768
    assert req.body["messages"] == MESSAGES


def test_default_model_is_filled_in(catalog: Catalog) -> None:
    for raw in (body(), body(model=None)):
        req = parse(catalog, raw)
        assert req.model_defaulted is True
        assert req.model.id == catalog.default_model == DEEPSEEK
        assert req.body["model"] == DEEPSEEK


def test_explicit_model_is_not_defaulted(catalog: Catalog) -> None:
    req = parse(catalog, body(model=TENCENT))
    assert req.model.id == TENCENT
    assert req.model_defaulted is False


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_under_cap_is_kept(catalog: Catalog, field: str) -> None:
    req = parse(catalog, body(model=DEEPSEEK, **{field: 100}))
    assert req.output_bound == 100


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_capped_at_model_max_output(catalog: Catalog, field: str) -> None:
    req = parse(catalog, body(model=DEEPSEEK, **{field: 10_000_000}))
    assert req.output_bound == req.model.max_output_tokens == 32_768


def test_max_completion_tokens_wins_over_max_tokens(catalog: Catalog) -> None:
    req = parse(catalog, body(max_completion_tokens=50, max_tokens=500))
    assert req.output_bound == 50


def test_null_max_tokens_means_model_budget(catalog: Catalog) -> None:
    req = parse(catalog, body(max_tokens=None))
    assert req.output_bound == req.model.max_output_tokens


def test_input_token_bound_covers_body_length(catalog: Catalog) -> None:
    for content in ("hi", "x" * 5000, "日本語のテキスト" * 300, "🙂" * 1000):
        raw = body(messages=[{"role": "user", "content": content}])
        req = parse(catalog, raw)
        assert req.input_bound >= len(raw)
        assert req.input_bound <= req.model.context_window
        # the typical-case estimate never exceeds the safe bound
        assert 0 < req.input_estimate <= req.input_bound


def test_input_token_bound_capped_at_context_window(catalog: Catalog) -> None:
    model = catalog.model(TENCENT)
    raw = body(model=TENCENT, messages=[{"role": "user", "content": "a" * (model.context_window + 10)}])
    req = parse(catalog, raw)
    assert len(raw) > model.context_window
    assert req.input_bound == model.context_window


def test_input_token_estimate_counts_the_whole_body(catalog: Catalog) -> None:
    # Messages of every kind, tools and tool results all count: ~4 bytes per token of the body.
    plain = parse(catalog, body(messages=[{"role": "user", "content": "a"}]))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "x": "y" * 4000}}}]
    result = {"role": "tool", "tool_call_id": "c1", "content": "z" * 4000}
    big = parse(catalog, body(messages=[{"role": "user", "content": "a"}, result], tools=tools))
    grown = len(body(messages=[{"role": "user", "content": "a"}, result], tools=tools)) - len(
        body(messages=[{"role": "user", "content": "a"}])
    )
    assert big.input_estimate - plain.input_estimate in (grown // 4, grown // 4 + 1)
    assert big.input_estimate <= big.input_bound


def test_estimate_tokens() -> None:
    assert estimate_tokens(0) == 0
    assert estimate_tokens(1) == 1
    assert estimate_tokens(4) == 1
    assert estimate_tokens(5) == 2
    assert estimate_tokens(4000) == 1000


@pytest.mark.parametrize("stream", [True, False, None])
def test_stream_flag(catalog: Catalog, stream: bool | None) -> None:
    req = parse(catalog, body(stream=stream))
    assert req.stream is bool(stream)


def test_client_usage_request_is_recorded(catalog: Catalog) -> None:
    assert parse(catalog, body(stream=True, stream_options={"include_usage": True})).hide_usage is False
    assert parse(catalog, body(stream=True, stream_options={"include_usage": False})).hide_usage is True
    assert parse(catalog, body(stream=True, stream_options={})).hide_usage is True
    assert parse(catalog, body(stream=True, stream_options={"include_usage": "yes"})).hide_usage is True


# --- invalid requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"messages": [}', b"\xff\xfe{}", b'{"a":1} trailing'])
def test_malformed_json(catalog: Catalog, raw: bytes) -> None:
    err = bad(catalog, raw)
    assert (err.code, err.status) == ("invalid_request", 400)
    assert "not valid JSON" in err.message
    assert err.param is None


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b'"hello"', b"42", b"null", b"true"])
def test_non_object_body(catalog: Catalog, raw: bytes) -> None:
    err = bad(catalog, raw)
    assert (err.code, err.status) == ("invalid_request", 400)
    assert "JSON object" in err.message


@pytest.mark.parametrize("messages", [_OMIT, None, [], {}, "hello", 3, {"role": "user"}])
def test_missing_or_empty_messages(catalog: Catalog, messages: Any) -> None:
    raw = orjson.dumps({"model": DEEPSEEK} | ({} if messages is _OMIT else {"messages": messages}))
    err = bad(catalog, raw)
    assert (err.code, err.status, err.param) == ("invalid_request", 400, "messages")


@pytest.mark.parametrize("message", ["hi", None, 1, ["role", "user"], True])
def test_non_object_message(catalog: Catalog, message: Any) -> None:
    err = bad(catalog, body(messages=[{"role": "user", "content": "ok"}, message]))
    assert (err.code, err.status, err.param) == ("invalid_request", 400, "messages")
    assert "object" in err.message


@pytest.mark.parametrize("model", [1, 1.5, True, [DEEPSEEK], {"id": DEEPSEEK}])
def test_model_of_wrong_type(catalog: Catalog, model: Any) -> None:
    err = bad(catalog, body(model=model))
    assert (err.code, err.status, err.param) == ("invalid_request", 400, "model")


@pytest.mark.parametrize("model", ["gpt-4o", "", "DeepSeek/DeepSeek-V4-Flash", DEEPSEEK + " "])
def test_unknown_model(catalog: Catalog, model: str) -> None:
    err = bad(catalog, body(model=model))
    assert (err.code, err.status, err.param) == ("model_not_found", 404, "model")
    assert f"'{model}'" in err.message


def test_unknown_model_message_is_bounded(catalog: Catalog) -> None:
    err = bad(catalog, body(model="m" * 10_000))
    assert err.code == "model_not_found"
    assert len(err.message) < 300


@pytest.mark.parametrize("stream", ["true", 1, 0, [], {}])
def test_stream_of_wrong_type(catalog: Catalog, stream: Any) -> None:
    err = bad(catalog, body(stream=stream))
    assert (err.code, err.status, err.param) == ("invalid_request", 400, "stream")


@pytest.mark.parametrize("options", ["include_usage", True, [], 1])
def test_stream_options_of_wrong_type(catalog: Catalog, options: Any) -> None:
    err = bad(catalog, body(stream=True, stream_options=options))
    assert (err.code, err.param) == ("invalid_request", "stream_options")


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [True, False, -1, 0, "100", 1.5, 100.0, [], {}])
def test_bad_max_tokens(catalog: Catalog, field: str, value: Any) -> None:
    err = bad(catalog, body(**{field: value}))
    assert (err.code, err.status, err.param) == ("invalid_request", 400, field)
    assert field in err.message


# --- upstream body ------------------------------------------------------------------------------


def test_upstream_body_unchanged_for_plain_request(catalog: Catalog) -> None:
    req = parse(catalog, body(model=DEEPSEEK, max_tokens=100))
    assert upstream_body(req) is None


def test_upstream_body_unchanged_when_stream_already_asks_for_usage(catalog: Catalog) -> None:
    req = parse(catalog, body(model=DEEPSEEK, max_tokens=100, stream=True, stream_options={"include_usage": True}))
    assert upstream_body(req) is None


def test_upstream_body_adds_include_usage_for_streams(catalog: Catalog) -> None:
    req = parse(catalog, body(model=DEEPSEEK, stream=True, temperature=0.2))
    out = upstream_body(req)
    assert out is not None
    sent = orjson.loads(out)
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == DEEPSEEK
    assert sent["temperature"] == 0.2
    assert sent["messages"] == MESSAGES
    assert req.hide_usage is True  # the extra chunk must still be hidden from the client


def test_upstream_body_overrides_explicit_false_and_keeps_other_options(catalog: Catalog) -> None:
    options = {"include_usage": False, "continuous_usage_stats": True, "x": [1, 2]}
    req = parse(catalog, body(model=DEEPSEEK, stream=True, stream_options=options))
    sent = orjson.loads(upstream_body(req) or b"")
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True, "x": [1, 2]}


def test_upstream_body_does_not_add_usage_for_non_streams(catalog: Catalog) -> None:
    req = parse(catalog, body(model=DEEPSEEK, max_tokens=9, stream=False, stream_options={"include_usage": False}))
    assert upstream_body(req) is None


def test_upstream_body_writes_defaulted_model(catalog: Catalog) -> None:
    req = parse(catalog, body())
    out = upstream_body(req)
    assert out is not None
    sent = orjson.loads(out)
    assert sent["model"] == DEEPSEEK
    assert "stream_options" not in sent


def test_upstream_body_defaulted_model_and_stream(catalog: Catalog) -> None:
    req = parse(catalog, body(model=None, stream=True, stream_options={"include_usage": True}))
    sent = orjson.loads(upstream_body(req) or b"")
    assert sent["model"] == DEEPSEEK
    assert sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "field, first, second",
    [
        ("model", '"tencent/hy3-preview"', '"deepseek/deepseek-v4-flash"'),
        ("max_tokens", "10", "100000"),
        ("stream", "false", "true"),
    ],
)
def test_duplicate_metered_fields_are_refused(field: str, first: str, second: str) -> None:
    raw = f'{{"{field}": {first}, "messages": [{{"role": "user", "content": "x"}}], "{field}": {second}}}'.encode()
    with pytest.raises(ApiError) as err:
        parse(load_catalog(), raw)
    assert err.value.code == "invalid_request" and err.value.param == field


def test_metered_words_inside_messages_are_not_duplicates() -> None:
    raw = b'{"model": "tencent/hy3-preview", "messages": [{"role": "user", "content": "x", "model": "a"}, {"role": "user", "content": "\\"model\\" \\"stream\\""}]}'
    assert parse_chat_request(raw, load_catalog()).model.id == "tencent/hy3-preview"


# --- the output bound the upstream receives ------------------------------------------------------


def sent(req: MeteredBody) -> dict[str, Any]:
    out = upstream_body(req)
    assert out is not None
    return orjson.loads(out)  # type: ignore[no-any-return]


def test_a_body_without_a_bound_gets_max_tokens_inserted(catalog: Catalog) -> None:
    req = parse(catalog, body(model=DEEPSEEK))
    assert sent(req)["max_tokens"] == 32_768 == req.output_bound
    assert "max_completion_tokens" not in sent(req)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_bound_over_the_budget_is_clamped_in_the_field_the_client_used(catalog: Catalog, field: str) -> None:
    req = parse(catalog, body(model=DEEPSEEK, **{field: 200_000}))
    out = sent(req)
    assert out[field] == 32_768 and req.output_bound == 32_768
    assert {"max_tokens", "max_completion_tokens"} - {field} - set(out) == {"max_tokens", "max_completion_tokens"} - {
        field
    }


def test_both_bounds_are_clamped_to_the_one_the_hold_used(catalog: Catalog) -> None:
    req = parse(catalog, body(model=DEEPSEEK, max_completion_tokens=10, max_tokens=30_000))
    out = sent(req)
    assert (out["max_completion_tokens"], out["max_tokens"], req.output_bound) == (10, 10, 10)


def test_n_multiplies_the_output_bound(catalog: Catalog) -> None:
    req = parse(catalog, body(model=DEEPSEEK, n=8, max_tokens=30_000))
    assert (req.generations, req.per_generation, req.output_bound) == (8, 30_000, 240_000)
    assert upstream_body(req) is None  # already within the budget: forwarded as sent, n and all


@pytest.mark.parametrize("value", [0, -1, 9, 1.5, "2", True, [2], 2**63 - 1])
def test_bad_or_too_large_n_is_400_naming_n(catalog: Catalog, value: Any) -> None:
    with pytest.raises(ApiError) as err:
        parse(catalog, body(model=DEEPSEEK, n=value))
    assert (err.value.code, err.value.param) == ("invalid_request", "n")


def test_a_catalog_default_output_bound_is_inserted(tmp_path: Any) -> None:
    text = (Path(__file__).parents[2] / "src/critique_sidecar/catalog.toml").read_text()
    text = text.replace("max_output_tokens = 32_768\n", "max_output_tokens = 32_768\ndefault_output_tokens = 4096\n", 1)
    (tmp_path / "c.toml").write_text(text)
    custom = load_catalog(tmp_path / "c.toml")
    req = parse_chat_request(body(model=DEEPSEEK), custom)
    assert sent(req)["max_tokens"] == 4096 == req.output_bound
    req = parse_chat_request(body(model=DEEPSEEK, max_tokens=20_000), custom)  # an explicit bound still counts
    assert req.output_bound == 20_000 and upstream_body(req) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"max_tokens":1,"max_tok\\u0065ns":30000,"messages":[{"role":"user","content":"x"}]}',
        b'{"m\\u006fdel":"tencent/hy3-preview","model":"deepseek/deepseek-v4-flash","messages":[{"role":"user","content":"x"}]}',
        b'{"n":1,"\\u006e":8,"messages":[{"role":"user","content":"x"}]}',
    ],
)
def test_escaped_names_count_as_duplicates(catalog: Catalog, raw: bytes) -> None:
    with pytest.raises(ApiError) as err:
        parse(catalog, raw)
    assert err.value.code == "invalid_request" and "more than once" in err.value.message


def test_escapes_in_content_are_not_duplicates(catalog: Catalog) -> None:
    raw = b'{"model":"tencent/hy3-preview","messages":[{"role":"user","content":"caf\\u00e9 \\u0061"}]}'
    assert parse(catalog, raw).model.id == TENCENT


@pytest.mark.parametrize("depth", [200, 1000, 1020])
@pytest.mark.parametrize("stream", [False, True])
def test_deep_nesting_is_400(catalog: Catalog, depth: int, stream: bool) -> None:
    nested = b"[" * depth + b"]" * depth
    raw = (
        b'{"stream":'
        + (b"true" if stream else b"false")
        + b',"messages":[{"role":"user","content":"x"}],"x":'
        + nested
        + b"}"
    )
    with pytest.raises(ApiError) as err:
        req = parse(catalog, raw)
        upstream_body(req)
    assert err.value.code == "invalid_request" and "nested" in err.value.message


def test_ordinary_nesting_passes(catalog: Catalog) -> None:
    nested = b"[" * 60 + b"]" * 60 + b"," + b"{}," * 200 + b"1"
    raw = b'{"stream":true,"messages":[{"role":"user","content":"x"}],"x":[' + nested + b"]}"
    assert orjson.loads(upstream_body(parse(catalog, raw)) or b"")["x"][-1] == 1


# --- inputs the body does not bound: images, audio, files --------------------------------------

IMAGE = {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}


def with_parts(*parts: dict[str, Any]) -> bytes:
    return body(
        model=DEEPSEEK, messages=[{"role": "user", "content": [{"type": "text", "text": "what is it"}, *parts]}]
    )


def test_a_text_only_request_is_held_at_its_bodys_bound(catalog: Catalog) -> None:
    raw = body(model=DEEPSEEK, messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert parse(catalog, raw).input_bound == len(raw) + 16


@pytest.mark.parametrize(
    "part",
    [IMAGE, AUDIO, {"type": "file", "file": {"file_id": "file-1"}}, {"type": "video_url", "video_url": {"url": "x"}}],
)
def test_an_item_the_body_does_not_bound_holds_the_context_window(catalog: Catalog, part: dict[str, Any]) -> None:
    """A small image can be thousands of tokens and a file id is not in the body at all: without
    a bound from the catalog, the input is held at the whole context window."""
    assert parse(catalog, with_parts(part)).input_bound == catalog.model(DEEPSEEK).context_window


def catalog_with(tmp_path: Path, extra: str) -> Catalog:
    text = (Path(__file__).parents[2] / "src/critique_sidecar/catalog.toml").read_text()
    text = text.replace("max_output_tokens = 32_768\n", f"max_output_tokens = 32_768\n{extra}\n", 1)
    (tmp_path / "c.toml").write_text(text)
    return load_catalog(tmp_path / "c.toml")


def test_a_declared_per_item_bound_is_added_per_item(tmp_path: Path) -> None:
    custom = catalog_with(tmp_path, 'inputs = ["image"]\ninput_item_tokens = { image = 1600 }')
    raw = with_parts(IMAGE, IMAGE)
    assert parse(custom, raw).input_bound == len(raw) + 16 + 2 * 1600


def test_a_kind_the_model_does_not_take_is_400(tmp_path: Path) -> None:
    custom = catalog_with(tmp_path, 'inputs = ["image"]\ninput_item_tokens = { image = 1600 }')
    err = bad(custom, with_parts(AUDIO))
    assert (err.code, err.status, err.param) == ("invalid_request", 400, "messages")
    assert "audio" in err.message and "image" in err.message


def test_a_text_only_model_refuses_an_image(tmp_path: Path) -> None:
    custom = catalog_with(tmp_path, "inputs = []")
    assert bad(custom, with_parts(IMAGE)).param == "messages"
