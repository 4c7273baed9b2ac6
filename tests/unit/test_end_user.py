"""The end user of a request (core/end_user.py): read from each endpoint's body and from the
X-Critique-End-User header, which wins; hostile values are a 400 naming the field; the body the
model server gets keeps the client's fields as sent."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from critique_sidecar.core import end_user
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints import chat, completions, embeddings, messages, responses
from critique_sidecar.core.endpoints.base import Limits, MeteredBody
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.wire import END_USER_HEADER, OPT_IN_HEADER, spoofed
from critique_sidecar.devtools.stack import demo_catalog_text

DEEPSEEK = "deepseek/deepseek-v4-flash"
EMBED = "example/text-embedding-small"
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> Limits:
    path = tmp_path_factory.mktemp("catalog") / "catalog.toml"
    path.write_text(demo_catalog_text())  # the built-in catalog and an embeddings model
    return Limits(load_catalog(path))


# Each OpenAI endpoint: its parse and a minimal valid body.
OPENAI: dict[str, tuple[Any, dict[str, Any]]] = {
    "chat.completions": (chat.parse, {"model": DEEPSEEK, "messages": MSGS}),
    "responses": (responses.parse, {"model": DEEPSEEK, "input": "hi"}),
    "completions": (completions.parse, {"model": DEEPSEEK, "prompt": "hi"}),
    "embeddings": (embeddings.parse, {"model": EMBED, "input": "hi"}),
}

# Values no end user may be: control characters (raw and escaped in JSON), format characters
# (a bidi override, a zero-width space), separators, edge whitespace, empty, too long, not strings.
HOSTILE: list[Any] = [
    "",
    " ",
    " bob",
    "bob ",
    "bob\n",
    "a\x00b",
    "a\tb",
    "a\x1bb",
    "a\x7fb",
    "a\x85b",
    "a\u202eb",
    "a\u200bb",
    "a\u2028b",
    "x" * 257,
    "x" * 10_240,
    42,
    1.5,
    True,
    ["bob"],
    {"id": "bob"},
    {"nested": {"deeper": ["bob"]}},
]
GOOD = ["bob", "user_123", "a", "x" * 256, "mail@example.com", "Zoë Ünicode 名前", "a b", '{"json": 1}', "<script>"]


def parse(name: str, limits: Limits, **fields: Any) -> MeteredBody:
    fn, base = OPENAI[name]
    result: MeteredBody = fn(orjson.dumps({**base, **fields}), limits)
    return result


def refused(fn: Any, raw: bytes, limits: Limits) -> ApiError:
    with pytest.raises(ApiError) as err:
        fn(raw, limits)
    return err.value


@pytest.mark.parametrize("value", GOOD)
def test_printable_ids_up_to_256_characters_are_end_users(value: str) -> None:
    assert end_user.valid(value) and end_user.checked(value, "user") == value


@pytest.mark.parametrize("value", HOSTILE)
def test_anything_else_is_refused(value: Any) -> None:
    assert not end_user.valid(value)
    with pytest.raises(ApiError) as err:
        end_user.checked(value, "user")
    assert (err.value.status, err.value.code, err.value.param) == (400, "invalid_request", "user")


@pytest.mark.parametrize("name", OPENAI)
def test_openai_bodies_name_the_end_user_in_user_or_safety_identifier(name: str, limits: Limits) -> None:
    assert parse(name, limits).end_user == ""  # most requests name none
    assert parse(name, limits, user=None).end_user == ""
    assert parse(name, limits, user="u-1").end_user == "u-1"
    assert parse(name, limits, safety_identifier="s-1").end_user == "s-1"
    both = parse(name, limits, user="u-1", safety_identifier="s-1")
    assert both.end_user == "s-1"  # the newer field is preferred
    assert (both.body["user"], both.body["safety_identifier"]) == ("u-1", "s-1")  # passed on as sent


@pytest.mark.parametrize("name", OPENAI)
@pytest.mark.parametrize("field", ["user", "safety_identifier"])
@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_openai_end_user_is_a_400_naming_the_field(name: str, field: str, value: Any, limits: Limits) -> None:
    fn, base = OPENAI[name]
    error = refused(fn, orjson.dumps({**base, field: value}), limits)
    assert (error.status, error.code, error.param) == (400, "invalid_request", field)
    assert error.shape == "openai" and orjson.loads(error.body())["error"]["param"] == field


@pytest.mark.parametrize("name", OPENAI)
def test_a_bad_user_is_refused_even_beside_a_good_safety_identifier(name: str, limits: Limits) -> None:
    fn, base = OPENAI[name]
    error = refused(fn, orjson.dumps({**base, "safety_identifier": "ok", "user": 7}), limits)
    assert error.param == "user"


@pytest.mark.parametrize("name", OPENAI)
def test_escapes_decode_before_the_check(name: str, limits: Limits) -> None:
    fn, base = OPENAI[name]
    prefix = orjson.dumps(base)[:-1]
    ok = fn(prefix + rb',"user":"caf\u00e9 \ud83d\ude00"}', limits)
    assert ok.end_user == "café 😀"
    error = refused(fn, prefix + rb',"user":"a\u0000b"}', limits)
    assert error.param == "user"
    error = refused(fn, prefix + rb',"user":"a\u202eb"}', limits)
    assert error.param == "user"


@pytest.mark.parametrize("name", OPENAI)
def test_a_user_named_twice_is_the_last_and_still_checked(name: str, limits: Limits) -> None:
    # Attribution bills nothing, so a repeated field is not refused as a metered one is.
    fn, base = OPENAI[name]
    prefix = orjson.dumps(base)[:-1]
    assert fn(prefix + b',"user":"a","user":"b"}', limits).end_user == "b"
    assert refused(fn, prefix + b',"user":"a","user":7}', limits).param == "user"


def test_messages_names_the_end_user_in_metadata_user_id(limits: Limits) -> None:
    def parse_messages(**fields: Any) -> MeteredBody:
        body = {"model": DEEPSEEK, "messages": MSGS, "max_tokens": 10, **fields}
        return messages.parse(orjson.dumps(body), limits)

    assert parse_messages().end_user == ""
    assert parse_messages(metadata={}).end_user == ""
    assert parse_messages(metadata={"user_id": None}).end_user == ""
    got = parse_messages(metadata={"user_id": "m-1", "other": 1})
    assert got.end_user == "m-1" and got.body["metadata"] == {"user_id": "m-1", "other": 1}
    assert parse_messages(user="ignored").end_user == ""  # not Messages' field
    for value in HOSTILE:
        with pytest.raises(ApiError) as err:
            parse_messages(metadata={"user_id": value})
        assert (err.value.status, err.value.param) == (400, "metadata.user_id")
    for metadata in ("bob", ["bob"], 1):
        with pytest.raises(ApiError) as err:
            parse_messages(metadata=metadata)
        assert err.value.param == "metadata"


@pytest.mark.parametrize("value", ["bob", "user_123", "x" * 256, "a b", "mail@example.com"])
def test_the_header_takes_printable_ascii(value: str) -> None:
    assert end_user.from_header(value, END_USER_HEADER) == value


@pytest.mark.parametrize("value", ["", " ", "a\tb", "a\x00b", "x" * 257, "x" * 10_240, "caf\u00e9", "a\x7fb"])
def test_a_hostile_header_is_a_400_naming_it(value: str) -> None:
    with pytest.raises(ApiError) as err:
        end_user.from_header(value, END_USER_HEADER)
    assert (err.value.status, err.value.code, err.value.param) == (400, "invalid_request", END_USER_HEADER)


def test_the_header_is_a_request_option_kept_for_the_exchange() -> None:
    # ext_authz strips client x-critique-* headers but the options (the exchange strips those).
    assert spoofed([END_USER_HEADER, OPT_IN_HEADER, "x-critique-model", "x-other"]) == ["x-critique-model"]
