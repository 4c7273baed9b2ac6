"""Identifiers and amounts are matched whole: a trailing newline (or any other character a
pattern's `$` would let through) makes a value invalid, never a second account, an amount or a
URL. Python's `re.match(r"^...$")` accepts "demo\\n"; every check here uses fullmatch."""

from __future__ import annotations

import pytest

from critique_sidecar.core.account_settings import SettingsPatch
from critique_sidecar.core.errors import ApiError
from critique_sidecar.core.key_controls import KeyControls
from critique_sidecar.provisioning.service import check_account, page_limit
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.usage_records import _account_of_stream


@pytest.mark.parametrize("account", ["demo\n", "demo\r\n", "demo ", "\ndemo", "de\nmo", "dемо", "a" * 65, ""])
def test_account_ids_are_matched_whole(account: str) -> None:
    with pytest.raises(ValueError):
        ks.check_account(account)
    with pytest.raises(ApiError) as err:
        check_account(account)
    assert err.value.param == "account"
    assert ks.account_of_notify_outbox(f"crt:{{a:{account}}}:notify") is None
    assert _account_of_stream(f"crt:{{a:{account}}}:usage") is None


def test_a_valid_account_id_still_passes() -> None:
    assert ks.check_account("demo-1_a.b") == check_account("demo-1_a.b") == "demo-1_a.b"


@pytest.mark.parametrize("amount", ["5\n", "5 ", " 5", "5\r", "٥", "5.0\n"])
def test_amounts_are_matched_whole(amount: str) -> None:
    with pytest.raises(ApiError) as err:
        SettingsPatch.parse({"daily_credit_cap": amount})
    assert err.value.param == "daily_credit_cap"
    with pytest.raises(ApiError):
        KeyControls.parse({"daily_credit_cap": amount})


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/h\n", "https://hooks.example.com\n", "https://hooks.example.com/h\r\n"]
)
def test_urls_are_matched_whole(url: str) -> None:
    with pytest.raises(ApiError) as err:
        SettingsPatch.parse({"notify_webhook_url": url})
    assert err.value.param == "notify_webhook_url"


@pytest.mark.parametrize("models", [["deepseek/deepseek-v4-flash\n"], ["a\nb"]])
def test_model_ids_are_matched_whole(models: list[str]) -> None:
    with pytest.raises(ApiError):
        KeyControls.parse({"models": models})


@pytest.mark.parametrize("when", ["2026-12-31\n", "2026-12-31T00:00:00Z\n"])
def test_times_are_matched_whole(when: str) -> None:
    with pytest.raises(ApiError):
        KeyControls.parse({"expires_at": when})


@pytest.mark.parametrize("raw", ["5\n", "٥", "5 "])
def test_page_limits_are_ascii_digits(raw: str) -> None:
    with pytest.raises(ApiError):
        page_limit(raw)
