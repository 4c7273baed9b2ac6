"""The settings model: exact credit amounts, strict types, null semantics, and the Redis hash
fields place_hold.lua reads."""

from __future__ import annotations

from decimal import Decimal

import pytest

from critique_sidecar.core.account_settings import AccountSettings, SettingsPatch
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.limit_table import MAX_CREDITS
from critique_sidecar.json_http import decode_body


def patch(body: bytes) -> SettingsPatch:
    return SettingsPatch.parse(decode_body(body))


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        (b'{"daily_credit_cap": 0.1}', {"daily_credit_cap": "100000"}),  # exact, not float 0.1
        (b'{"daily_credit_cap": "0.000001"}', {"daily_credit_cap": "1"}),
        (b'{"monthly_credit_cap": 1000000000}', {"monthly_credit_cap": "1000000000000000"}),
        (b'{"reserve_credits_for_review": 0}', {"reserve_floor": "0"}),
        (b'{"daily_request_cap": 0}', {"daily_request_cap": "0"}),
        (b'{"enabled": false, "block_when_cap_reached": true, "deepseek_training_opt_in": true}',
         {"enabled": "0", "block_when_cap_reached": "1", "training_opt_in": "1"}),
    ],
)  # fmt: skip
def test_valid_values_map_to_hash_fields(body: bytes, stored: dict[str, str]) -> None:
    assert patch(body).hash_changes() == (stored, [])


def test_only_sent_fields_change_and_null_deletes_a_cap() -> None:
    assert patch(b"{}").hash_changes() == ({}, [])
    to_set, to_delete = patch(
        b'{"daily_credit_cap": null, "monthly_credit_cap": null, "daily_request_cap": null, "enabled": true}'
    ).hash_changes()
    assert to_set == {"enabled": "1"}
    assert to_delete == ["daily_credit_cap", "daily_request_cap", "monthly_credit_cap"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"daily_credit_cap": true}', "daily_credit_cap"),
        (b'{"daily_credit_cap": "1e3"}', "daily_credit_cap"),
        (b'{"daily_credit_cap": " 1"}', "daily_credit_cap"),
        (b'{"daily_credit_cap": 1e400}', "daily_credit_cap"),
        (b'{"daily_credit_cap": 1000000000.000001}', "daily_credit_cap"),
        (b'{"reserve_credits_for_review": -0.5}', "reserve_credits_for_review"),
        (b'{"daily_request_cap": true}', "daily_request_cap"),
        (b'{"daily_request_cap": 1000000001}', "daily_request_cap"),
        (b'{"enabled": null}', "enabled"),
        (b'{"Enabled": true}', "Enabled"),
        (b'{"daily_credit_cap": Infinity}', None),
        (b'"enabled"', None),
    ],
)
def test_invalid_values_name_the_field(body: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as err:
        patch(body)
    assert (err.value.code, err.value.status, err.value.param) == ("invalid_request", 400, param)


def test_hash_round_trip_and_lua_semantics() -> None:
    full = SettingsPatch.parse({
        "enabled": False, "monthly_credit_cap": "100", "daily_credit_cap": Decimal("2.5"), "daily_request_cap": 9,
        "reserve_credits_for_review": MAX_CREDITS, "block_when_cap_reached": False, "deepseek_training_opt_in": True,
        "requests_per_minute": 60, "tokens_per_minute": 90000, "max_concurrent": 3,
        "credits_per_minute": "0.5", "credits_per_hour": 20,
        "end_user_daily_credit_cap": "1.5", "end_user_monthly_credit_cap": 10, "end_user_requests_per_minute": 6,
    })  # fmt: skip
    stored, _ = full.hash_changes()
    back = AccountSettings.from_hash(stored)
    assert back.to_json() == {
        "enabled": False, "monthly_credit_cap": "100.000000", "daily_credit_cap": "2.500000", "daily_request_cap": 9,
        "reserve_credits_for_review": "1000000000.000000", "block_when_cap_reached": False, "deepseek_training_opt_in": True,
        "requests_per_minute": 60, "tokens_per_minute": 90000, "max_concurrent": 3,
        "credits_per_minute": "0.500000", "credits_per_hour": "20.000000",
        "end_user_daily_credit_cap": "1.500000", "end_user_monthly_credit_cap": "10.000000",
        "end_user_requests_per_minute": 6,
        "notify_webhook_url": None, "notify_thresholds_percent": [], "notify_low_balance_credits": None,
    }  # fmt: skip
    # As place_hold.lua reads them: only '0' disables/softens, only '1' opts in, junk caps are no caps.
    odd = AccountSettings.from_hash(
        {"enabled": "yes", "block_when_cap_reached": "", "training_opt_in": "true", "daily_credit_cap": "x"}
    )
    assert (odd.enabled, odd.block_when_cap_reached, odd.deepseek_training_opt_in, odd.daily_credit_cap) == (
        True,
        True,
        False,
        None,
    )
    assert AccountSettings.from_hash({}) == AccountSettings()


# >>> limits
@pytest.mark.parametrize(
    ("body", "stored", "deleted"),
    [(b'{"requests_per_minute": 60, "tokens_per_minute": 1000000000, "max_concurrent": 1}',
      {"rpm": "60", "tpm": "1000000000", "max_concurrent": "1"}, []),
     (b'{"requests_per_minute": null, "max_concurrent": null}', {}, ["max_concurrent", "rpm"])],
)  # fmt: skip
def test_rate_limits_map_to_hash_fields(body: bytes, stored: dict[str, str], deleted: list[str]) -> None:
    assert patch(body).hash_changes() == (stored, deleted)


@pytest.mark.parametrize(
    "body",
    [b'{"requests_per_minute": 0}', b'{"tokens_per_minute": 1000000001}', b'{"max_concurrent": "5"}',
     b'{"requests_per_minute": 2.0}', b'{"max_concurrent": true}'],
)  # fmt: skip
def test_bad_rate_limits_name_the_field(body: bytes) -> None:
    with pytest.raises(ApiError) as err:
        patch(body)
    assert err.value.param in ("requests_per_minute", "tokens_per_minute", "max_concurrent")
    assert "must be an integer from 1 to" in err.value.message


# <<< limits


# -- budget notification settings -----------------------------------------------------------


def test_notification_settings_round_trip() -> None:
    p = SettingsPatch.parse(
        {"notify_webhook_url": "https://hooks.example.com/critique?x=1", "notify_thresholds_percent": [100, 50, 80],
         "notify_low_balance_credits": "2.5"}
    )  # fmt: skip
    stored, deleted = p.hash_changes()
    assert stored == {
        "notify_url": "https://hooks.example.com/critique?x=1", "notify_thresholds": "50,80,100", "notify_low_balance": "2500000",
    } and deleted == []  # fmt: skip
    back = AccountSettings.from_hash(stored).to_json()
    assert back["notify_thresholds_percent"] == [50, 80, 100]
    assert back["notify_low_balance_credits"] == "2.500000"
    assert back["notify_webhook_url"] == "https://hooks.example.com/critique?x=1"
    cleared = SettingsPatch.parse(
        {"notify_webhook_url": None, "notify_thresholds_percent": [], "notify_low_balance_credits": None}
    )
    assert cleared.hash_changes() == ({}, ["notify_low_balance", "notify_thresholds", "notify_url"])


@pytest.mark.parametrize(
    "body",
    [
        {"notify_webhook_url": "ftp://example.com/x"},
        {"notify_webhook_url": "https://user:pw@example.com/x"},
        {"notify_webhook_url": "https://example.com/x#frag"},
        {"notify_webhook_url": "https://exa mple.com/"},
        {"notify_webhook_url": "https://example.com/" + "a" * 2100},
        {"notify_webhook_url": 5},
        {"notify_webhook_url": "example.com/x"},
        {"notify_thresholds_percent": [0]},
        {"notify_thresholds_percent": [101]},
        {"notify_thresholds_percent": [50, 50]},
        {"notify_thresholds_percent": "50,80"},
        {"notify_thresholds_percent": [True]},
        {"notify_thresholds_percent": [50.0]},
        {"notify_thresholds_percent": list(range(1, 12))},
        {"notify_low_balance_credits": "-1"},
        {"notify_webhook_secret": "x" * 30},  # the secret is never set through the API
    ],
)
def test_notification_settings_are_strict(body: dict[str, object]) -> None:
    with pytest.raises(ApiError) as err:
        SettingsPatch.parse(body)
    assert err.value.code == "invalid_request" and err.value.param == next(iter(body))
