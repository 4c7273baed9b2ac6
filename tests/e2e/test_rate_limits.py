"""Per-minute rate limits through the real Envoy and sidecar, on one Redis and on a 3-master Redis
Cluster: 200 requests at once against 50 per minute admit exactly 50; a tokens-per-minute limit
admits exactly the requests whose bounds fit (and settlement turns bounds into actual usage); a
concurrency limit of 5 under 50 slow streams never has more than 5 in flight (sampled in Redis),
refuses the rest with 429 and releases every hold. The openai SDK sees the x-ratelimit-* and
x-request-id headers and does not retry a cap refusal (counted at the sidecar)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints import chat as chat_endpoint
from critique_sidecar.core.endpoints.base import Limits
from critique_sidecar.devtools.stack import Stack, wait_until
from critique_sidecar.store import keyspace as ks

from .helpers import stack_on, started

pytestmark = pytest.mark.slow

CATALOG = load_catalog()
MODEL = "deepseek/deepseek-v4-flash"
RATE_HEADERS = {
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
}  # fmt: skip
DURATION = re.compile(r"^(0s|[0-9]+ms|([0-9]+h)?([0-9]+m)?[0-9]+(\.[0-9]+)?s)$")


@pytest.fixture(scope="module", params=["redis", "cluster"])
def rl_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"limits-{request.param}")
    with stack_on(request.param, workdir) as s, started(s):
        yield s


def store(stack: Stack) -> Any:
    if "CRITIQUE_REDIS_CLUSTER" in stack.sidecar_env:
        return redis.RedisCluster.from_url(str(stack.redis_url))
    return redis.Redis.from_url(str(stack.redis_url))


def records(stack: Stack, account: str, count: int) -> list[dict[str, str]]:
    """The account's usage records once there are `count` (settlement ends each exchange)."""

    def read() -> list[dict[str, str]]:
        with store(stack) as r:
            return [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(ks.usage_stream(account))]

    wait_until(lambda: len(read()) >= count, f"{count} usage record(s)", timeout=15)
    return read()


def key_with(stack: Stack, account: str, *flags: str, credits: str = "1000") -> dict[str, Any]:
    created = json.loads(
        stack.cli(
            "keys", "create", "--account", account, "--scopes", "read:inference,write:inference", "--json", *flags
        )
    )
    stack.cli("credits", "grant", "--account", account, "--credits", credits)
    return created  # type: ignore[no-any-return]


def body(content: str, max_tokens: int = 50, stream: bool = False) -> bytes:
    data: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
    }
    if stream:
        data["stream"] = True
    return json.dumps(data).encode()


async def _burst(url: str, key: str, payloads: list[bytes]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(payloads), max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        return list(await asyncio.gather(*(client.post(url, headers=headers, content=p) for p in payloads)))


def burst(stack: Stack, key: str, payloads: list[bytes]) -> list[httpx.Response]:
    return asyncio.run(_burst(stack.base_url + "/api/v1/chat/completions", key, payloads))


def codes(responses: list[httpx.Response]) -> Counter[Any]:
    return Counter(r.status_code if r.status_code == 200 else r.json()["error"]["code"] for r in responses)


def test_200_at_once_against_50_per_minute_admit_exactly_50(rl_stack: Stack, account: str) -> None:
    key = key_with(rl_stack, account, "--rpm", "50")
    responses = burst(rl_stack, key["key"], [body("rpm burst")] * 200)
    assert codes(responses) == {200: 50, "rate_limit_exceeded": 150}
    for r in responses:
        assert {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"} <= set(
            r.headers
        )
        assert r.headers["x-ratelimit-limit-requests"] == "50" and "x-ratelimit-limit-tokens" not in r.headers
        assert DURATION.match(r.headers["x-ratelimit-reset-requests"])
        if r.status_code == 429:
            assert 1 <= int(r.headers["retry-after"]) <= 60 and r.headers["x-ratelimit-remaining-requests"] == "0"
            assert "50 requests per minute" in r.json()["error"]["message"]
            assert r.headers.get("x-should-retry") is None  # lifts within a minute: retrying is right
        else:
            assert r.headers["x-request-id"] == r.headers["x-critique-request-id"]
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status_code == 200)
    assert remaining == list(range(50))  # each admission saw the one before it: one atomic step each
    assert len(records(rl_stack, account, 50)) == 50


def test_tokens_per_minute_admit_exactly_what_fits(rl_stack: Stack, account: str) -> None:
    # Slow replies, so nothing settles (and gives tokens back) while the burst is admitted.
    payload = body("[[slow:4000]] [[tokens:5]] tpm burst", max_tokens=50)
    chat = chat_endpoint.parse(payload, Limits(CATALOG))
    bound = chat.input_bound + chat.output_bound
    limit = 7 * bound + bound // 2
    key = key_with(rl_stack, account, "--tpm", str(limit))
    responses = burst(rl_stack, key["key"], [payload] * 60)
    assert codes(responses) == {200: 7, "rate_limit_exceeded": 53}
    refused = [r for r in responses if r.status_code == 429]
    assert {r.headers["x-ratelimit-remaining-tokens"] for r in refused} == {str(bound // 2)}
    assert all("tokens per minute" in r.json()["error"]["message"] for r in refused)
    # Settled: each bound in the window became the tokens actually used.
    settled = records(rl_stack, account, 7)
    used = sum(int(r["input_tokens"]) + int(r["output_tokens"]) for r in settled)
    with store(rl_stack) as r:
        assert int(r.hget(ks.limiter(account), f"tw:{key['key_id']}")) == used < 7 * bound


def test_concurrency_limit_of_5_under_50_slow_streams(rl_stack: Stack, account: str) -> None:
    key = key_with(rl_stack, account, "--max-concurrent", "5")
    payload = body("[[slow:150]] [[tokens:8]] slow stream", stream=True)
    peak = {"holds": 0, "inflight": 0, "samples": 0}
    stop = threading.Event()

    def sample() -> None:
        with store(rl_stack) as r:
            while not stop.is_set():
                holds = r.hlen(ks.holds(account))
                inflight = int(r.hget(ks.limiter(account), f"n:{key['key_id']}") or 0)
                peak["holds"] = max(peak["holds"], holds)
                peak["inflight"] = max(peak["inflight"], inflight)
                peak["samples"] += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        responses = burst(rl_stack, key["key"], [payload] * 50)
    finally:
        stop.set()
        sampler.join()
    assert codes(responses) == {200: 5, "rate_limit_exceeded": 45}
    assert all(r.text.rstrip().endswith("data: [DONE]") for r in responses if r.status_code == 200)
    assert all("5 concurrent requests" in r.json()["error"]["message"] for r in responses if r.status_code == 429)
    assert peak["samples"] > 10 and peak["holds"] == peak["inflight"] == 5  # reached, never exceeded
    records(rl_stack, account, 5)
    with store(rl_stack) as r:
        wait_until(lambda: r.hlen(ks.holds(account)) == 0, "every hold released", timeout=10)
        assert r.hget(ks.limiter(account), f"n:{key['key_id']}") is None
        assert r.hlen(ks.hold_info(account)) == 0


def _denials(stack: Stack, code: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports['http']}/metrics", timeout=5).text
    m = re.search(rf'^critique_requests_total\{{code="{code}",decision="denied"\}} (\S+)$', text, re.M)
    if m is None:
        m = re.search(rf'^critique_requests_total\{{decision="denied",code="{code}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_the_sdk_sees_the_headers_and_does_not_retry_a_cap(rl_stack: Stack, account: str) -> None:
    key = key_with(rl_stack, account, "--rpm", "100", "--tpm", "100000")
    client = openai.OpenAI(api_key=key["key"], base_url=rl_stack.base_url + "/api/v1", timeout=30)  # default retries
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "sdk headers"}], max_tokens=20
    )
    assert set(raw.headers) >= RATE_HEADERS
    assert raw.headers["x-ratelimit-limit-requests"] == "100" and raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["x-ratelimit-reset-requests"] == "1m0s"
    [record] = records(rl_stack, account, 1)
    assert raw.headers["x-request-id"] == record["request_id"] == raw.http_response.headers["x-critique-request-id"]
    assert raw.parse().usage is not None

    rl_stack.cli("settings", "set", "--account", account, "--daily-request-cap", "1")
    before = _denials(rl_stack, "daily_request_cap_reached")
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "capped"}], max_tokens=20)
    assert err.value.response.headers["x-should-retry"] == "false"
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.response.headers["x-ratelimit-remaining-requests"] == "99"  # refusals show them too
    assert err.value.request_id == err.value.response.headers["x-request-id"]
    assert _denials(rl_stack, "daily_request_cap_reached") - before == 1  # one request, no retries
