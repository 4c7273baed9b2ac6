"""Per-key controls: strict JSON validation naming the field, the stored hash place_hold.lua
reads (and reading it back as the script would), partial changes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.key_controls import KeyControls
from critique_sidecar.json_http import decode_body


def parse(raw: bytes, known: set[str] | None = None) -> KeyControls:
    return KeyControls.parse(decode_body(raw), known)


def test_full_controls_round_trip_through_json_and_the_hash() -> None:
    c = parse(
        b'{"expires_at": "2026-12-31T10:00:00+02:00", "models": ["a/b", "c"], "daily_credit_cap": 0.1,'
        b' "requests_per_minute": 60, "tokens_per_minute": 100000, "max_concurrent": 4,'
        b' "credits_per_minute": "0.25", "credits_per_hour": 3}'
    )
    assert c.expires_at_ms == 1798704000000 and c.daily_credit_cap == 100_000  # exact, never a float
    assert c.to_json() == {
        "expires_at": "2026-12-31T08:00:00Z", "models": ["a/b", "c"], "daily_credit_cap": "0.100000",
        "requests_per_minute": 60, "tokens_per_minute": 100000, "max_concurrent": 4,
        "credits_per_minute": "0.250000", "credits_per_hour": "3.000000",
    }  # fmt: skip
    assert c.to_hash() == {"expires_at_ms": "1798704000000", "models": ",a/b,c,", "daily_credit_cap": "100000",
                           "rpm": "60", "tpm": "100000", "max_concurrent": "4",
                           "credits_per_minute": "250000", "credits_per_hour": "3000000"}  # fmt: skip
    assert KeyControls.from_hash(c.to_hash()) == c
    assert KeyControls.parse(c.to_json()) == c  # what is shown can be sent back unchanged


def test_a_date_is_midnight_utc_and_null_clears() -> None:
    c = parse(b'{"expires_at": "2026-12-31", "requests_per_minute": 5}')
    assert c.expires_at_ms == 1798675200000
    cleared = c.patched({"expires_at": None})
    assert cleared == KeyControls(requests_per_minute=5) and not cleared.empty
    assert KeyControls().empty and KeyControls().to_hash() == {}


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        (b'{"expires_at": "2026-12-31T00:00:00"}', "expires_at", "UTC offset"),
        (b'{"expires_at": 1798675200000}', "expires_at", "time like"),
        (b'{"expires_at": "tomorrow"}', "expires_at", "time like"),
        (b'{"models": []}', "models", "1 to 64"),
        (b'{"models": ["a,b"]}', "models", "model ids"),
        (b'{"models": ["a", "a"]}', "models", "twice"),
        (b'{"models": "a"}', "models", "list"),
        (b'{"daily_credit_cap": -1}', "daily_credit_cap", "negative"),
        (b'{"daily_credit_cap": "0.0000001"}', "daily_credit_cap", "6 decimal"),
        (b'{"requests_per_minute": 0}', "requests_per_minute", "from 1 to"),
        (b'{"tokens_per_minute": "100"}', "tokens_per_minute", "integer"),
        (b'{"max_concurrent": 1.0}', "max_concurrent", "integer"),
        (b'{"max_concurrent": true}', "max_concurrent", "integer"),
        (b'{"rpm": 5}', "rpm", "unknown field"),
    ],
)
def test_bad_values_name_the_field(body: bytes, param: str, needle: str) -> None:
    with pytest.raises(ApiError) as err:
        parse(body)
    assert (err.value.code, err.value.param) == ("invalid_request", param)
    assert needle in err.value.message


def test_unknown_models_are_refused_when_the_catalog_is_given() -> None:
    with pytest.raises(ApiError, match="unknown model"):
        parse(b'{"models": ["acme/nope"]}', {"a/b"})
    assert parse(b'{"models": ["a/b"]}', {"a/b"}).models == ("a/b",)


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ValueError):
        KeyControls(requests_per_minute=0)
    with pytest.raises(ValueError):
        KeyControls(models=())
    with pytest.raises(ValueError):
        KeyControls(daily_credit_cap=int(Decimal("1e16")))
    assert KeyControls(expires_at_ms=1000).expired(1000) and not KeyControls().expired(10**13)


def test_garbage_in_the_hash_counts_as_no_control() -> None:
    assert KeyControls.from_hash({"rpm": "0", "tpm": "x", "max_concurrent": "-1", "models": ",,"}).empty
