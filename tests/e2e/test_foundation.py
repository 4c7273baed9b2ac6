"""The metered gateway end to end, through both front doors (`front_door`): openai SDK -> real Envoy
(repo envoy.yaml) -> sidecar -> fake upstream, and openai SDK -> the ASGI gateway -> fake upstream."""

from __future__ import annotations

import subprocess
from decimal import Decimal

import httpx
import openai
import pytest

from critique_sidecar.devtools.stack import REPO, Stack, envoy_binary

from .helpers import FrontDoor, balance, client, expected_charge, funded_key, upstream_count, upstream_seen

MSG = [{"role": "user", "content": "Summarize this retry policy in three bullets."}]


def test_repo_envoy_yaml_validates() -> None:
    out = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(REPO / "envoy.yaml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


DEMO_MODELS = 4  # the product page's three and the demo's example embeddings model


def test_models_list(stack: Stack, front_door: FrontDoor, account: str) -> None:
    models = client(front_door, funded_key(stack, account, "0")).models.list()
    ids = [m.id for m in models]
    # the product page's three, then the demo's example embeddings model (the local stack adds it)
    product = ["deepseek/deepseek-v4-flash", "tencent/hy3-preview", "nvidia/nemotron-3-ultra-550b-a55b"]
    assert ids == [*product, "example/text-embedding-small"]
    first = models.data[0].model_dump()
    assert first["pricing"]["input_usd_per_million"] == "0.15"
    assert first["pricing"]["training_opt_in"] == {"input_usd_per_million": "0.0375", "output_usd_per_million": "0.075"}


# MSG is 45 characters: the fake upstream reports 45 // 4 + 1 = 12 prompt tokens and 12 completion
# tokens. Worked out by hand from catalog.toml (USD per million tokens; 1 credit = 0.01 USD, so
# one token at P USD/M costs 100 * P micro-credits, rounded up once per request):
#   deepseek  0.15 / 0.30:    12 * 15   + 12 * 30   = 540 micro-credits        USD 0.0000054
#   tencent   0.0567 / 0.189: 12 * 5.67 + 12 * 18.9  = 294.84 -> 295 (rounded up) USD 0.0000029484
#   nemotron  0.60 / 2.40:    12 * 60   + 12 * 240  = 3600 (list: its promotion has ended) USD 0.000036
LIST_CHARGES = [
    ("deepseek/deepseek-v4-flash", "0.000540", "0.0000054"),
    ("tencent/hy3-preview", "0.000295", "0.0000029484"),
    ("nvidia/nemotron-3-ultra-550b-a55b", "0.003600", "0.000036"),
]


@pytest.mark.parametrize("model, credits, usd", LIST_CHARGES)
def test_chat_charge_equals_usage_times_price_and_balance_change(
    stack: Stack, front_door: FrontDoor, account: str, model: str, credits: str, usd: str
) -> None:
    key = funded_key(stack, account, "10")
    before = balance(stack, account)
    raw = client(front_door, key).chat.completions.with_raw_response.create(model=model, messages=MSG, max_tokens=50)
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 12)
    assert (raw.headers["x-critique-credits-charged"], raw.headers["x-critique-estimated-usd"]) == (credits, usd)
    assert raw.headers["x-critique-request-id"].startswith("req_")
    assert before - balance(stack, account) == Decimal(credits)


def test_default_model_is_filled_in(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    r = httpx.post(front_door.chat_url, headers={"authorization": f"Bearer {key}"}, json={"messages": MSG})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "deepseek/deepseek-v4-flash"
    assert upstream_seen(stack)[-1]["body"]["model"] == "deepseek/deepseek-v4-flash"


def test_no_key_bad_key_and_revoked_key_get_401(stack: Stack, front_door: FrontDoor, account: str) -> None:
    url = front_door.chat_url
    r = httpx.post(url, json={"messages": MSG})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"

    with pytest.raises(openai.AuthenticationError) as bad:
        client(front_door, "crt_" + "A" * 38).chat.completions.create(model="deepseek/deepseek-v4-flash", messages=MSG)
    assert bad.value.code == "invalid_api_key"

    created = stack.create_key(account)
    stack.cli("credits", "grant", "--account", account, "--credits", "1")
    ok = client(front_door, created["key"]).models.list()
    assert len(ok.data) == DEMO_MODELS
    stack.cli("keys", "revoke", created["key_id"])
    with pytest.raises(openai.AuthenticationError):
        client(front_door, created["key"]).chat.completions.create(model="deepseek/deepseek-v4-flash", messages=MSG)
    with pytest.raises(openai.AuthenticationError):
        client(front_door, created["key"]).models.list()


def test_read_only_key_cannot_post(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account, scopes="read:inference")
    assert len(client(front_door, key).models.list().data) == DEMO_MODELS
    with pytest.raises(openai.PermissionDeniedError) as err:
        client(front_door, key).chat.completions.create(model="deepseek/deepseek-v4-flash", messages=MSG)
    assert err.value.code == "insufficient_scope"


def test_builder_scopes_also_work(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account, scopes="read:builder,write:builder")
    assert len(client(front_door, key).models.list().data) == DEMO_MODELS
    assert client(front_door, key).chat.completions.create(model="tencent/hy3-preview", messages=MSG).usage is not None


def test_empty_balance_gets_402_and_nothing_reaches_upstream(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account, "0")
    seen_before = upstream_count(stack)
    with pytest.raises(openai.APIStatusError) as err:
        client(front_door, key).chat.completions.create(model="deepseek/deepseek-v4-flash", messages=MSG)
    assert err.value.status_code == 402
    assert err.value.code == "insufficient_credits"
    assert upstream_count(stack) == seen_before
    assert balance(stack, account) == 0


def test_unknown_model_404(stack: Stack, front_door: FrontDoor, account: str) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(front_door, funded_key(stack, account)).chat.completions.create(model="acme/nope", messages=MSG)
    assert err.value.code == "model_not_found"
    assert balance(stack, account) == Decimal("10")


@pytest.mark.parametrize(
    "body, param",
    [(b"{not json", None), (b'{"model": "deepseek/deepseek-v4-flash"}', "messages"), (b'{"messages": []}', "messages"),
     (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "max_tokens"),
     (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream")],
)  # fmt: skip
def test_malformed_body_400(stack: Stack, front_door: FrontDoor, account: str, body: bytes, param: str | None) -> None:
    key = funded_key(stack, account)
    r = httpx.post(
        front_door.chat_url,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        content=body,
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and err["type"] == "invalid_request_error" and err["param"] == param
    assert balance(stack, account) == Decimal("10")


def test_upstream_never_sees_key_or_spoofed_headers(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    r = httpx.post(
        front_door.chat_url,
        headers={
            "authorization": f"Bearer {key}",
            "x-critique-account": "someone-else",
            "X-Critique-Key-Id": "key_spoofed",
            "x-critique-model": "tencent/hy3-preview",
        },
        json={"model": "deepseek/deepseek-v4-flash", "messages": [{"role": "user", "content": "spoof check"}]},
    )
    assert r.status_code == 200
    seen = upstream_seen(stack)[-1]
    assert seen["body"]["messages"][0]["content"] == "spoof check"
    assert "crt_" not in str(seen["headers"])
    assert seen["headers"]["authorization"] == f"Bearer {stack.upstream_key}"  # the operator's credential
    assert not [h for h in seen["headers"] if h.startswith("x-critique-")]
    assert seen["body"]["model"] == "deepseek/deepseek-v4-flash"
    assert balance(stack, account) < Decimal("10")  # the key's own account paid


# DeepSeek's opt-in tier 0.0375 / 0.075: 12 * 3.75 + 12 * 7.5 = 135 micro-credits, USD 0.00000135
# (a quarter of list); the header changes nothing for other models (tencent as in LIST_CHARGES).
@pytest.mark.parametrize(
    "model, credits, usd",
    [("deepseek/deepseek-v4-flash", "0.000135", "0.00000135"), ("tencent/hy3-preview", "0.000295", "0.0000029484")],
)
def test_training_opt_in_header_prices_deepseek_only(
    stack: Stack, front_door: FrontDoor, account: str, model: str, credits: str, usd: str
) -> None:
    key = funded_key(stack, account)
    raw = client(front_door, key).chat.completions.with_raw_response.create(
        model=model, messages=MSG, extra_headers={"X-Critique-DeepSeek-Training-Opt-In": "true"}
    )
    usage = raw.parse().usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 12)
    assert (raw.headers["x-critique-credits-charged"], raw.headers["x-critique-estimated-usd"]) == (credits, usd)
    assert expected_charge(model, 12, 12, opt_in=True) == (credits, usd)  # the helper agrees with the hand


def test_upstream_error_releases_hold_and_charges_nothing(stack: Stack, front_door: FrontDoor, account: str) -> None:
    key = funded_key(stack, account)
    with pytest.raises(openai.InternalServerError):
        client(front_door, key).chat.completions.create(
            model="deepseek/deepseek-v4-flash", messages=[{"role": "user", "content": "[[status:500]]"}]
        )
    show = stack.cli("credits", "show", "--account", account, "--json")
    assert '"held": "0.000000"' in show and '"balance": "10.000000"' in show


def test_unknown_route_is_json_404(front_door: FrontDoor) -> None:
    r = httpx.get(f"{front_door.base_url}/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
