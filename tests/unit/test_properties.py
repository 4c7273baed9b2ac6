"""Property-based tests: the parsers never fail with anything but their documented outcome."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints import chat
from critique_sidecar.core.endpoints.base import Limits, read_json
from critique_sidecar.core.endpoints.chat import usage as usage_from_obj
from critique_sidecar.core.endpoints.openai_stream import choices_bytes as completion_text_bytes
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.keys import KEY_LEN, bearer_token, is_well_formed
from critique_sidecar.core.money import format_credits, format_usd, parse_credits, usd_to_micro_credits
from critique_sidecar.core.tokens import TokenCounts

from .test_keys import BASE62, oracle_checksum  # one independent checksum oracle

CATALOG = load_catalog()
LIMITS = Limits(CATALOG)


def parse_json_response(raw: bytes) -> tuple[TokenCounts | None, int]:
    _, usage, output_bytes = read_json(chat.ENDPOINT, raw)
    return usage, output_bytes


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Integers within orjson's 64-bit range (larger ones it reads as floats, which the tests below
# cover through arbitrary bytes instead).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
# Values that sometimes look like the real thing, to reach past the first checks.
models = st.sampled_from([m.id for m in CATALOG.models]) | json_values
messages = (
    st.lists(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]), "content": json_values | st.text()})
        | json_values,
        max_size=3,
    )
    | json_values
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": models,
        "messages": messages,
        "stream": st.booleans() | json_values,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": json_values, "x": json_values})
        | json_values,
        "max_tokens": st.integers() | json_values,
        "max_completion_tokens": st.integers() | json_values,
        "temperature": json_values,
    },
)


def check_parse(raw: bytes) -> None:
    try:
        req = chat.parse(raw, LIMITS)
    except ApiError as err:
        assert err.code in ("invalid_request", "model_not_found")
        assert err.status in (400, 404)
        orjson.loads(err.body())
        return
    assert CATALOG.model(req.model.id) is req.model
    assert 0 < req.per_generation <= req.model.max_output_tokens
    assert min(len(raw), req.model.context_window) <= req.input_bound <= req.model.context_window
    if req.changed:
        sent = orjson.loads(orjson.dumps(req.body))
        assert sent["model"] == req.model.id
        if req.stream:
            assert sent["stream_options"]["include_usage"] is True


@SETTINGS
@given(st.binary(max_size=300))
def test_parse_chat_request_on_arbitrary_bytes(raw: bytes) -> None:
    check_parse(raw)


@SETTINGS
@given(json_values)
def test_parse_chat_request_on_arbitrary_json(value: Any) -> None:
    check_parse(json.dumps(value).encode())


@SETTINGS
@given(chat_bodies)
def test_parse_chat_request_on_chat_like_objects(value: dict[str, Any]) -> None:
    check_parse(json.dumps(value).encode())


@SETTINGS
@given(json_values)
def test_usage_from_obj_never_raises(value: Any) -> None:
    usage = usage_from_obj(value)
    assert usage is None or (usage.input_tokens >= 0 and usage.output_tokens >= 0)
    assert completion_text_bytes(value) >= 0


@SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "usage": st.fixed_dictionaries(
                {}, optional={"prompt_tokens": json_values, "completion_tokens": json_values}
            )
            | json_values,
            "choices": st.lists(
                st.fixed_dictionaries({}, optional={"message": json_values, "delta": json_values}) | json_values,
                max_size=3,
            )
            | json_values,
        },
    )
)
def test_usage_from_completion_like_objects(value: dict[str, Any]) -> None:
    usage = usage_from_obj(value)
    u = value.get("usage")
    reported = isinstance(u, dict) and all(
        type(u.get(f)) is int and u[f] >= 0 for f in ("prompt_tokens", "completion_tokens")
    )
    assert (usage is not None) == reported
    if usage is not None:
        assert (usage.input_tokens, usage.output_tokens) == (u["prompt_tokens"], u["completion_tokens"])
        assert 0 <= usage.cached_input_tokens <= usage.input_tokens
        assert 0 <= usage.reasoning_tokens <= usage.output_tokens
    raw = json.dumps(value).encode()
    parsed, text_bytes = parse_json_response(raw)
    assert parsed == usage
    assert text_bytes >= 0


@SETTINGS
@given(json_values)
def test_parse_json_response_on_arbitrary_json(value: Any) -> None:
    raw = json.dumps(value).encode()
    usage, text_bytes = parse_json_response(raw)
    assert usage is None or isinstance(usage, TokenCounts)
    assert 0 <= text_bytes <= len(raw) * 3


@SETTINGS
@given(st.binary(max_size=300))
def test_parse_json_response_on_arbitrary_bytes(raw: bytes) -> None:
    usage, text_bytes = parse_json_response(raw)
    assert usage is None or isinstance(usage, TokenCounts)
    assert text_bytes >= 0


@SETTINGS
@given(
    st.text(max_size=60)
    | st.text(alphabet=BASE62 + "_crt", min_size=KEY_LEN, max_size=KEY_LEN)
    | st.builds(lambda s: "crt_" + s, st.text(min_size=KEY_LEN - 4, max_size=KEY_LEN - 4))
)
def test_is_well_formed_never_raises_and_checks_checksum(key: str) -> None:
    ok = is_well_formed(key)
    assert isinstance(ok, bool)
    if ok:
        assert key.startswith("crt_") and len(key) == KEY_LEN
        assert set(key[4:]) <= set(BASE62)
        assert key[-6:] == oracle_checksum(key[4:36])


@SETTINGS
@given(st.text(alphabet=BASE62, min_size=32, max_size=32), st.text(alphabet=BASE62, min_size=6, max_size=6))
def test_is_well_formed_accepts_exactly_matching_checksums(body: str, checksum: str) -> None:
    assert is_well_formed("crt_" + body + checksum) == (checksum == oracle_checksum(body))
    assert is_well_formed("crt_" + body + oracle_checksum(body))


@SETTINGS
@given(
    st.text(alphabet=BASE62, min_size=32, max_size=32),
    st.integers(min_value=4, max_value=KEY_LEN - 1),
    st.integers(min_value=1, max_value=61),
)
def test_any_single_character_change_is_rejected(body: str, pos: int, shift: int) -> None:
    key = "crt_" + body + oracle_checksum(body)
    changed = BASE62[(BASE62.index(key[pos]) + shift) % 62]
    assert not is_well_formed(key[:pos] + changed + key[pos + 1 :])


@SETTINGS
@given(st.none() | st.text(max_size=80) | st.builds(lambda s: "Bearer " + s, st.text(max_size=60)))
def test_bearer_token_never_raises(header: str | None) -> None:
    token = bearer_token(header)
    assert token is None or (token and token == token.strip())
    if token is not None:
        assert header is not None and token in header


@SETTINGS
@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_credit_format_round_trips(micro: int) -> None:
    assert parse_credits(format_credits(micro)) == micro


@SETTINGS
@given(st.decimals(allow_nan=False, allow_infinity=False, places=12, min_value=0, max_value=10**6))
def test_micro_credits_never_undercharge(usd: Decimal) -> None:
    micro = usd_to_micro_credits(usd, Decimal("0.01"))
    assert micro >= usd * 100 * 1_000_000
    assert micro - usd * 100 * 1_000_000 < 1
    assert "e" not in format_usd(usd).lower()
    assert Decimal(format_usd(usd)) == usd
