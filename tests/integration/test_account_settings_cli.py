"""The operator CLI's `settings set` / `settings show` on real Redis: every account setting,
refused values, and the notification settings with their webhook secret."""

from __future__ import annotations

import json

import pytest

from critique_sidecar import cli

# -- the operator CLI ----------------------------------------------------------------------


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str, *argv: str
) -> tuple[int, str, str]:
    monkeypatch.setenv("CRITIQUE_REDIS_URL", redis_url)
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_settings_set_and_show(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str, account: str
) -> None:
    code, out, _ = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--enabled", "false",
        "--daily-credit-cap", "12.5", "--monthly-credit-cap", "100", "--daily-request-cap", "40",
        "--reserve-floor", "2.25", "--block-when-cap-reached", "false", "--training-opt-in", "true", "--json",
        "--rpm", "600", "--max-concurrent", "8", "--credits-per-minute", "0.5",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out) == {
        "enabled": False, "monthly_credit_cap": "100.000000", "daily_credit_cap": "12.500000", "daily_request_cap": 40,
        "reserve_credits_for_review": "2.250000", "block_when_cap_reached": False, "deepseek_training_opt_in": True,
        "requests_per_minute": 600, "tokens_per_minute": None, "max_concurrent": 8,
        "credits_per_minute": "0.500000", "credits_per_hour": None,
        "end_user_daily_credit_cap": None, "end_user_monthly_credit_cap": None, "end_user_requests_per_minute": None,
        "notify_webhook_url": None, "notify_thresholds_percent": [], "notify_low_balance_credits": None,
    }  # fmt: skip
    code, out, _ = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--daily-credit-cap", "none"
    )
    assert code == 0 and "daily_credit_cap: none" in out.splitlines()
    code, out, _ = _cli(monkeypatch, capsys, redis_url, "settings", "show", "--account", account)
    assert code == 0
    assert out.splitlines() == [  # the limits in the limit table's order (core/limit_table.py)
        "enabled: false", "daily_request_cap: 40", "daily_credit_cap: none", "monthly_credit_cap: 100.000000",
        "credits_per_minute: 0.500000", "credits_per_hour: none", "requests_per_minute: 600", "tokens_per_minute: none", "max_concurrent: 8",
        "end_user_daily_credit_cap: none", "end_user_monthly_credit_cap: none", "end_user_requests_per_minute: none",
        "reserve_credits_for_review: 2.250000", "block_when_cap_reached: false", "deepseek_training_opt_in: true",
        "notify_webhook_url: none", "notify_thresholds_percent: none", "notify_low_balance_credits: none",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--daily-credit-cap", "-1", "is negative"),
        ("--daily-credit-cap", "ten", "non-numeric"),
        ("--monthly-credit-cap", "0.0000001", "more than 6 decimal places"),
        ("--daily-request-cap", "1.5", "must be an integer"),
        ("--daily-request-cap", "-2", "must be an integer >= 0"),
        ("--enabled", "maybe", "must be true or false"),
        ("--reserve-floor", "none", "cannot be null"),
    ],
)
def test_cli_settings_bad_values_exit_2_and_change_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    account: str,
    flag: str,
    value: str,
    says: str,
) -> None:
    assert (
        _cli(monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--daily-request-cap", "5")[0]
        == 0
    )
    code, out, err = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--enabled", "false", flag, value
    )
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"critique-sidecar: error: {flag}: ") and says in err
    code, out, _ = _cli(monkeypatch, capsys, redis_url, "settings", "show", "--account", account, "--json")
    assert json.loads(out)["enabled"] is True and json.loads(out)["daily_request_cap"] == 5


# -- the notification settings through the CLI --------------------------------------------


def test_cli_notification_settings_and_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str, account: str
) -> None:
    code, out, _ = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account,
        "--notify-webhook-url", "https://hooks.example.com/in", "--notify-thresholds", "80,50,100",
        "--notify-low-balance", "5", "--json",
    )  # fmt: skip
    got = json.loads(out)
    assert code == 0 and got["notify_thresholds_percent"] == [50, 80, 100]
    assert got["notify_low_balance_credits"] == "5.000000" and got["notify_webhook_secret"].startswith("whsec_")
    code, out, _ = _cli(monkeypatch, capsys, redis_url, "settings", "show", "--account", account, "--json")
    assert code == 0 and "notify_webhook_secret" not in json.loads(out)  # shown once
    code, out, _ = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--notify-webhook-secret",
        "operator-chosen-secret-0123456789", "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["notify_webhook_secret"] == "operator-chosen-secret-0123456789"
    code, _, err = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--notify-thresholds", "50,x"
    )
    assert code == 2 and "--notify-thresholds" in err
    code, _, err = _cli(
        monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--notify-webhook-secret", "short"
    )
    assert code == 2 and "--notify-webhook-secret" in err


def test_cli_end_users_set_limits_and_show(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str, account: str
) -> None:
    code, _, _ = _cli(monkeypatch, capsys, redis_url, "settings", "set", "--account", account, "--end-user-rpm", "30")
    assert code == 0
    code, out, _ = _cli(
        monkeypatch, capsys, redis_url, "end-users", "set-limits", "--account", account, "--end-user", "u-1",
        "--daily-credit-cap", "1.5", "--json",
    )  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["effective"] == {
        "daily_credit_cap": "1.500000", "monthly_credit_cap": None, "requests_per_minute": 30
    }  # fmt: skip
    code, out, _ = _cli(monkeypatch, capsys, redis_url, "end-users", "show", "--account", account, "--end-user", "u-1")
    assert code == 0 and out.splitlines() == [
        "daily_credit_cap: 1.500000 (own)", "monthly_credit_cap: none (account default)",
        "requests_per_minute: 30 (account default)",
    ]  # fmt: skip
    code, _, err = _cli(
        monkeypatch, capsys, redis_url, "end-users", "set-limits", "--account", account, "--end-user", "u-1",
        "--rpm", "0",
    )  # fmt: skip
    assert code == 2 and "--rpm:" in err
    code, _, err = _cli(
        monkeypatch, capsys, redis_url, "end-users", "show", "--account", account, "--end-user", " padded",
    )  # fmt: skip
    assert code == 2 and "--end-user" in err
