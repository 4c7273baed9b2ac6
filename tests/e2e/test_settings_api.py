"""The settings API and the account controls end to end, through both front doors: plain HTTP
and the openai SDK -> real Envoy (repo envoy.yaml, ext_authz on the settings route) -> sidecar
-> Redis, and the same -> the ASGI gateway -> Redis."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
import redis

from critique_sidecar.core.clock import seconds_to_next_utc_midnight, utc_now
from critique_sidecar.core.scopes import SETTINGS_PATH
from critique_sidecar.devtools.stack import Stack
from critique_sidecar.store import keyspace

from .helpers import FrontDoor, balance, client, expected_charge, funded_key, upstream_seen

MODEL = "deepseek/deepseek-v4-flash"
DEFAULTS: dict[str, Any] = {
    "enabled": True, "monthly_credit_cap": None, "daily_credit_cap": None, "daily_request_cap": None,
    "reserve_credits_for_review": "0.000000", "block_when_cap_reached": True, "deepseek_training_opt_in": False,
    "requests_per_minute": None, "tokens_per_minute": None, "max_concurrent": None,
    "credits_per_minute": None, "credits_per_hour": None,
    "end_user_daily_credit_cap": None, "end_user_monthly_credit_cap": None, "end_user_requests_per_minute": None,
    "notify_webhook_url": None, "notify_thresholds_percent": [], "notify_low_balance_credits": None,
}  # fmt: skip


class Api:
    """Plain-HTTP settings calls through one front door with one key."""

    def __init__(self, door: FrontDoor, key: str) -> None:
        self.url = door.base_url + SETTINGS_PATH
        self.headers = {"authorization": f"Bearer {key}"}

    def get(self) -> httpx.Response:
        return httpx.get(self.url, headers=self.headers)

    def patch(self, body: Any = None, raw: bytes | None = None) -> httpx.Response:
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.patch(self.url, headers={**self.headers, "content-type": "application/json"}, content=content)

    def set(self, **fields: Any) -> dict[str, Any]:
        r = self.patch(fields)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def admin(stack: Stack, front_door: FrontDoor, account: str) -> Api:
    """An operator credential for the account (admin:inference), minted by the CLI; every test
    using it runs through both front doors."""
    return Api(front_door, stack.create_key(account, "admin:inference")["key"])


@pytest.fixture
def agent_key(stack: Stack, account: str) -> str:
    """An agent's inference key on a funded account: it can read settings and chat, not PATCH."""
    return funded_key(stack, account, "10", scopes="read:inference,write:inference")


def chat(door: FrontDoor, key: str, content: str = "hello", **extra: Any) -> Any:
    return client(door, key).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=20, **extra
    )


def usage_count(stack: Stack, account: str) -> int:
    with redis.Redis.from_url(str(stack.redis_url)) as r:
        return int(r.xlen(keyspace.usage_stream(account)))


# -- GET / PATCH ---------------------------------------------------------------------------


def test_get_returns_the_full_defaults_to_an_inference_key(
    stack: Stack, front_door: FrontDoor, admin: Api, agent_key: str
) -> None:
    r = Api(front_door, agent_key).get()
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == DEFAULTS
    assert admin.get().json() == DEFAULTS


def test_patch_is_partial_and_null_clears_a_cap(admin: Api) -> None:
    first = admin.set(daily_credit_cap="12.5", daily_request_cap=100)
    assert first == {**DEFAULTS, "daily_credit_cap": "12.500000", "daily_request_cap": 100}
    second = admin.set(monthly_credit_cap=250, reserve_credits_for_review=1.25, block_when_cap_reached=False)
    assert second == {
        **first, "monthly_credit_cap": "250.000000", "reserve_credits_for_review": "1.250000", "block_when_cap_reached": False,
    }  # fmt: skip
    third = admin.set(daily_credit_cap=None, daily_request_cap=None)
    assert third == {**second, "daily_credit_cap": None, "daily_request_cap": None}
    assert admin.get().json() == third
    assert admin.set() == third  # an empty PATCH changes nothing and returns the settings
    assert admin.set(**third) == third  # what GET returns PATCHes back unchanged


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (b'{"daily_credit_cap": 5, "surprise": 1}', "surprise", "unknown field 'surprise'"),
        (b'{"daily_credit_cap": -1}', "daily_credit_cap", "is negative"),
        (b'{"monthly_credit_cap": "lots"}', "monthly_credit_cap", "non-numeric"),
        (b'{"monthly_credit_cap": [1]}', "monthly_credit_cap", "must be a number of credits"),
        (b'{"daily_credit_cap": 0.0000001}', "daily_credit_cap", "more than 6 decimal places"),
        (b'{"daily_request_cap": "10"}', "daily_request_cap", "must be an integer"),
        (b'{"daily_request_cap": 2.5}', "daily_request_cap", "must be an integer"),
        (b'{"enabled": "false"}', "enabled", "must be true or false"),
        (b'{"block_when_cap_reached": 0}', "block_when_cap_reached", "must be true or false"),
        (b'{"deepseek_training_opt_in": null}', "deepseek_training_opt_in", "cannot be null"),
        (b'{"daily_credit_cap": 1, "enabled": "no"}', "enabled", "must be true or false"),
        (b'{"daily_credit_cap": NaN}', None, "not valid JSON"),
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
        (b"", None, "not valid JSON"),
    ],
)
def test_bad_patch_is_400_naming_the_field_and_changes_nothing(
    admin: Api, body: bytes, param: str | None, says: str
) -> None:
    before = admin.set(daily_credit_cap=7, enabled=True)
    r = admin.patch(raw=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["type"], err["param"]) == ("invalid_request", "invalid_request_error", param)
    assert says in err["message"]
    assert admin.get().json() == before


def test_an_inference_key_cannot_patch_its_own_caps(
    stack: Stack, front_door: FrontDoor, admin: Api, agent_key: str
) -> None:
    before = admin.set(daily_credit_cap=1, daily_request_cap=5)
    agent = Api(front_door, agent_key)
    r = agent.patch({"daily_credit_cap": 1000, "daily_request_cap": None})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "insufficient_scope" and r.json()["error"]["type"] == "permission_error"
    assert agent.get().json() == before  # it may still read them

    anonymous = httpx.patch(agent.url, json={"daily_credit_cap": 1000})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "invalid_api_key"
    assert admin.get().json() == before


def test_an_admin_key_cannot_chat_and_a_read_key_cannot_patch(
    stack: Stack, front_door: FrontDoor, account: str, admin: Api
) -> None:
    read_only = Api(front_door, stack.create_key(account, "read:inference")["key"])
    assert read_only.patch({"enabled": False}).status_code == 403
    admin_key = admin.headers["authorization"].split()[1]
    with pytest.raises(openai.PermissionDeniedError) as err:
        chat(front_door, admin_key)
    assert err.value.code == "insufficient_scope"
    assert admin.get().json()["enabled"] is True


def test_settings_set_by_the_cli_are_what_the_api_shows(stack: Stack, account: str, admin: Api) -> None:
    stack.cli("settings", "set", "--account", account, "--monthly-credit-cap", "3.5", "--training-opt-in", "true")
    assert admin.get().json() == {**DEFAULTS, "monthly_credit_cap": "3.500000", "deepseek_training_opt_in": True}


# -- the settings take effect on the chat route --------------------------------------------


def test_disabled_account_gets_403_and_nothing_is_charged(
    stack: Stack, front_door: FrontDoor, account: str, admin: Api, agent_key: str
) -> None:
    admin.set(enabled=False)
    marker = f"disabled-{uuid.uuid4().hex}"
    with pytest.raises(openai.PermissionDeniedError) as err:
        chat(front_door, agent_key, marker)
    assert err.value.status_code == 403 and err.value.code == "inference_disabled"
    assert balance(stack, account) == Decimal(10)
    assert usage_count(stack, account) == 0
    assert marker not in json.dumps(upstream_seen(stack))

    admin.set(enabled=True)
    assert chat(front_door, agent_key).http_response.status_code == 200


def test_soft_mode_passes_with_a_warning_header(
    stack: Stack, front_door: FrontDoor, account: str, admin: Api, agent_key: str
) -> None:
    admin.set(block_when_cap_reached=False, daily_credit_cap=0, daily_request_cap=0)
    raw = chat(front_door, agent_key)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-critique-warning"] == "daily_request_cap_reached,daily_credit_cap_reached"
    usage = raw.parse().usage
    assert (
        raw.headers["x-critique-credits-charged"]
        == expected_charge(MODEL, usage.prompt_tokens, usage.completion_tokens)[0]
    )
    assert balance(stack, account) == Decimal(10) - Decimal(raw.headers["x-critique-credits-charged"])

    admin.set(block_when_cap_reached=True)  # the same state, hard mode
    with pytest.raises(openai.RateLimitError) as err:
        chat(front_door, agent_key)
    assert err.value.code == "daily_request_cap_reached"


def test_no_warning_header_under_the_caps(stack: Stack, front_door: FrontDoor, admin: Api, agent_key: str) -> None:
    admin.set(block_when_cap_reached=False, daily_credit_cap=5, daily_request_cap=10)
    raw = chat(front_door, agent_key)
    assert raw.http_response.status_code == 200 and "x-critique-warning" not in raw.headers


@pytest.mark.parametrize(
    ("fields", "code", "retry_after"),
    [
        ({"daily_request_cap": 1}, "daily_request_cap_reached", "day"),
        ({"daily_credit_cap": "0.001"}, "daily_credit_cap_reached", "day"),
        ({"monthly_credit_cap": "0.001"}, "monthly_credit_cap_reached", "month"),
    ],
)
def test_hard_mode_caps_are_429_with_retry_after_to_the_window_end(
    stack: Stack,
    front_door: FrontDoor,
    account: str,
    admin: Api,
    agent_key: str,
    fields: dict[str, Any],
    code: str,
    retry_after: str,
) -> None:
    admin.set(**fields)
    if code == "daily_request_cap_reached":
        assert chat(front_door, agent_key).http_response.status_code == 200  # the one allowed request
    spent = Decimal(10) - balance(stack, account)
    latest = seconds_to_next_utc_midnight(utc_now())
    with pytest.raises(openai.RateLimitError) as err:
        chat(front_door, agent_key)
    earliest = seconds_to_next_utc_midnight(utc_now())
    assert err.value.status_code == 429 and err.value.code == code
    assert err.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    headers = err.value.response.headers
    if retry_after == "day":
        assert earliest <= int(headers["retry-after"]) <= latest
    else:  # the 1st of next month, 00:00 UTC: never before the next midnight, at most 31 days away
        assert earliest <= int(headers["retry-after"]) <= 31 * 86400
    assert headers["x-should-retry"] == "false"  # the SDKs must not retry a cap that lifts at the window's end
    assert Decimal(10) - balance(stack, account) == spent  # the refusal charged nothing


def test_reserve_floor_is_402_naming_the_floor(
    stack: Stack, front_door: FrontDoor, account: str, admin: Api, agent_key: str
) -> None:
    admin.set(reserve_credits_for_review="9.999", block_when_cap_reached=False)  # soft mode: the floor stays hard
    with pytest.raises(openai.APIStatusError) as err:
        chat(front_door, agent_key)
    assert err.value.status_code == 402 and err.value.code == "insufficient_credits"
    assert "reserve floor of 9.999000 credits is kept for review" in err.value.message
    assert balance(stack, account) == Decimal(10)
    admin.set(reserve_credits_for_review=9)
    assert chat(front_door, agent_key).http_response.status_code == 200
    assert balance(stack, account) >= Decimal(9)


def test_account_training_opt_in_prices_deepseek_at_the_opt_in_tier(
    stack: Stack, front_door: FrontDoor, admin: Api, agent_key: str
) -> None:
    admin.set(deepseek_training_opt_in=True)
    raw = chat(front_door, agent_key)
    usage = raw.parse().usage
    credits, usd = expected_charge(MODEL, usage.prompt_tokens, usage.completion_tokens, opt_in=True)
    _list_credits, list_usd = expected_charge(MODEL, usage.prompt_tokens, usage.completion_tokens)
    assert (raw.headers["x-critique-credits-charged"], raw.headers["x-critique-estimated-usd"]) == (credits, usd)
    assert Decimal(usd) * 4 == Decimal(list_usd)
