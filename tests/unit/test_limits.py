"""What clients see of the rate limits: OpenAI-style headers and durations, refusal messages,
and which refusals tell the SDKs not to retry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from critique_sidecar.core.limits import RateStatus, Window, duration, rate_refusal, rate_status, retry_headers


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (-5, "0s"), (1, "1ms"), (999, "999ms"), (1000, "1s"), (1500, "1.5s"), (1020, "1.02s"),
     (60000, "1m0s"), (360000, "6m0s"), (61500, "1m1.5s"), (3_723_000, "1h2m3s")],
)  # fmt: skip
def test_durations_as_openai_writes_them(ms: int, text: str) -> None:
    assert duration(ms) == text


def test_headers_only_for_the_limits_that_apply() -> None:
    assert rate_status(-1, -1, -1, -1, -1, -1) is None
    only_requests = rate_status(50, 49, 60000, -1, -1, -1)
    assert only_requests == RateStatus(Window(50, 49, 60000), None)
    assert only_requests.headers() == {
        "x-ratelimit-limit-requests": "50", "x-ratelimit-remaining-requests": "49", "x-ratelimit-reset-requests": "1m0s",
    }  # fmt: skip
    both = rate_status(50, 0, 1200, 1000, 10, 20)
    assert both is not None and set(both.headers()) == {
        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
    }  # fmt: skip


def test_rate_refusals_name_the_limit_and_when_to_retry() -> None:
    err = rate_refusal("key:requests_per_minute:50", 1200, 80)
    assert (err.status, err.code, err.headers) == (429, "rate_limit_exceeded", {"retry-after": "2"})
    assert "this API key allows 50 requests per minute" in err.message
    err = rate_refusal("account:max_concurrent:5", 1000, 80)
    assert "this account allows 5 concurrent requests" in err.message and err.headers["retry-after"] == "1"
    never = rate_refusal("account:tokens_per_minute:10", -1, 80)
    assert never.headers == {"x-should-retry": "false"} and "up to 80 tokens" in never.message


def test_caps_that_will_not_lift_soon_say_so() -> None:
    now = datetime(2026, 11, 30, 23, 59, 30, tzinfo=UTC)
    assert retry_headers("monthly_credit_cap_reached", now) == {"retry-after": "30", "x-should-retry": "false"}
    assert retry_headers("daily_credit_cap_reached", now) == {"retry-after": "30", "x-should-retry": "false"}
    assert retry_headers("insufficient_credits", now) == {"x-should-retry": "false"}
    assert retry_headers("rate_limit_exceeded", now) == {}
