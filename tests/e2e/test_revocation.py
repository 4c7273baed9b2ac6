"""Revocation over pub/sub, with two sidecar processes behind the real Envoy.

The key cache lives for an hour here (CRITIQUE_KEY_CACHE_TTL_S), so a revoked key can only be
refused within seconds if the announcement reached both processes. Each case first breaks the
sidecars' subscriptions (their connections killed, or Redis itself restarted), waits for them
to come back, warms both caches again, and then revokes: the announcement must still arrive."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from critique_sidecar.devtools.stack import Stack, wait_until
from critique_sidecar.store import keyspace as ks
from critique_sidecar.store.key_store import REVOCATIONS_CHANNEL

from .faultkit import CHAT_PATH, SERVING, health, restart_redis
from .helpers import both_sidecars_healthy, sidecar_hosts, started

pytestmark = pytest.mark.slow

CACHE_TTL_S = 3600
REFUSED_WITHIN_S = 10  # far inside the cache lifetime: only the announcement explains it
BODY = {"model": "deepseek/deepseek-v4-flash", "messages": [{"role": "user", "content": "revocation"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("revocation"),
        sidecar_count=2,
        persist_redis=True,  # a restarted Redis keeps the keys
        sidecar_env={"CRITIQUE_KEY_CACHE_TTL_S": str(CACHE_TTL_S)},
    )
    with started(s, two_sidecars=True):
        yield s


def _subscribers(stack: Stack) -> int:
    with redis.Redis.from_url(str(stack.redis_url)) as r:
        return int(dict(r.pubsub_numsub(REVOCATIONS_CHANNEL))[REVOCATIONS_CHANNEL.encode()])


def _chat(stack: Stack, key: str) -> int:
    return httpx.post(stack.base_url + CHAT_PATH, headers={"authorization": f"Bearer {key}"}, json=BODY).status_code


def _answers_from_both(stack: Stack, key: str, want: int) -> None:
    """Send requests until each sidecar process has answered `want` to the last ones it served:
    Envoy spreads ext_proc streams over both endpoints, and its per-host counters tell which
    process served each request."""
    last: dict[int, int] = {}
    deadline = time.monotonic() + REFUSED_WITHIN_S
    while time.monotonic() < deadline:
        before = {port: h["rq_total"] for port, h in sidecar_hosts(stack).items()}
        status = _chat(stack, key)
        after = {port: h["rq_total"] for port, h in sidecar_hosts(stack).items()}
        for port in after:
            if after[port] > before.get(port, 0):
                last[port] = status
        if len(last) == 2 and set(last.values()) == {want}:
            return
    raise AssertionError(f"within {REFUSED_WITHIN_S}s, the sidecars' last answers were {last}, not all {want}")


def _kill_subscriber_connections(stack: Stack) -> None:
    with redis.Redis.from_url(str(stack.redis_url)) as r:
        assert r.client_kill_filter(_type="pubsub") == 2


def _restart_redis(stack: Stack) -> None:
    restart_redis(stack)
    wait_until(lambda: health(stack, 0) == health(stack, 1) == SERVING, "both sidecars SERVING again", timeout=30)
    wait_until(lambda: both_sidecars_healthy(stack), "Envoy sees both sidecars healthy again", timeout=30)


@pytest.mark.parametrize("interruption", [_kill_subscriber_connections, _restart_redis], ids=["client-kill", "restart"])
def test_a_revocation_after_the_feed_reconnects_reaches_both_sidecars(
    stack: Stack, interruption: Callable[[Stack], None], account: str
) -> None:
    created = stack.create_key(account)
    stack.cli("credits", "grant", "--account", account, "--credits", "100")
    key = created["key"]
    _answers_from_both(stack, key, 200)  # both processes have the key cached

    wait_until(lambda: _subscribers(stack) == 2, "both sidecars subscribed", timeout=10)
    interruption(stack)
    wait_until(lambda: _subscribers(stack) == 2, "both sidecars subscribed again", timeout=20)

    _answers_from_both(stack, key, 200)  # cached again after the reconnect (which cleared the caches)
    stack.cli("keys", "revoke", created["key_id"])
    _answers_from_both(stack, key, 401)


def test_a_revocation_missed_while_the_feed_was_down_is_applied_after_the_reconnect(stack: Stack, account: str) -> None:
    """The announcement is lost (the key is marked revoked with no publish, as when the feed
    is down); killing the subscriber connections makes redis-py reconnect by itself. The
    reconnect is a gap, so both caches are dropped and the key is refused at once."""
    created = stack.create_key(account)
    stack.cli("credits", "grant", "--account", account, "--credits", "100")
    _answers_from_both(stack, created["key"], 200)
    wait_until(lambda: _subscribers(stack) == 2, "both sidecars subscribed", timeout=10)
    with redis.Redis.from_url(str(stack.redis_url)) as r:
        key_hash = r.get(ks.key_by_id(created["key_id"])).decode()
        r.hset(ks.key_by_hash(key_hash), "revoked", "1")  # revoked, never announced
    _answers_from_both(stack, created["key"], 200)  # still cached for an hour: nothing said otherwise
    _kill_subscriber_connections(stack)
    wait_until(lambda: _subscribers(stack) == 2, "both sidecars subscribed again", timeout=20)
    _answers_from_both(stack, created["key"], 401)
