"""Redis faults through the real Envoy stack (docs/design.md, "Failure policy").

- Redis down or frozen at admission: 503 `service_unavailable` in the JSON error shape within a
  bounded time, nothing reaches the upstream, gRPC health NOT_SERVING and back.
- Redis down at settlement (after the upstream answered): the client still gets its 200 and
  charge headers, the charge is fsynced to the journal and replayed once when Redis returns.
- A sidecar restarted with a non-empty journal replays it, once.

Every test runs its own stack with a persistent Redis (append-only, fsync always), so a Redis
killed and restarted on the same port keeps its data, as a production Redis with AOF would."""

from __future__ import annotations

import functools
import signal
import time
from pathlib import Path

import pytest

from critique_sidecar.devtools.stack import wait_until

from .faultkit import (
    NOT_SERVING,
    SERVING,
    Background,
    body,
    fault_stack,
    funded,
    journal,
    journal_path,
    ledger,
    post,
    restart_redis,
    restart_sidecar,
    upstream_count,
    upstream_saw,
    wait_health,
)

pytestmark = pytest.mark.slow

ADMISSION_BOUND_S = 3.0  # what the client may wait for a 503 when the store is gone


def assert_service_unavailable(response: object, elapsed: float, what: str) -> None:
    r = response  # httpx.Response
    assert r.status_code == 503, f"{what}: {r.status_code} {r.text}"  # type: ignore[attr-defined]
    assert r.headers["content-type"].startswith("application/json")  # type: ignore[attr-defined]
    error = r.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "service_unavailable" and error["type"] == "api_error" and error["message"], what
    assert elapsed < ADMISSION_BOUND_S, f"{what}: 503 took {elapsed:.2f}s"


def test_redis_killed_at_admission_503_fast_nothing_upstream_health_flips(tmp_path: Path, account: str) -> None:
    with fault_stack(tmp_path) as stack:
        key = funded(stack, account)
        cold_key = str(stack.create_key(account)["key"])  # never used: not in the sidecar's key cache
        warm, _ = post(stack, key, body("warm up"))
        assert warm.status_code == 200
        assert wait_health(stack, SERVING) >= 0
        seen_before = upstream_count(stack)

        stack.stop("redis", signal.SIGKILL)
        timings = {}
        for name, k in (("cached key", key), ("uncached key", cold_key)):
            r, elapsed = post(stack, k, body(f"during outage {name}"))
            assert_service_unavailable(r, elapsed, name)  # a store failure is never a 401 nor a free pass
            timings[name] = elapsed
        r, elapsed = post(stack, key, body("streamed during outage", stream=True))
        assert_service_unavailable(r, elapsed, "stream")
        assert upstream_count(stack) == seen_before  # nothing reached the upstream unpaid
        to_not_serving = wait_health(stack, NOT_SERVING)

        restart_redis(stack)
        to_serving = wait_health(stack, SERVING)
        after, _ = post(stack, cold_key, body("after the outage"))
        assert after.status_code == 200, after.text
        print(
            f"redis killed: 503 in {timings}; health NOT_SERVING after {to_not_serving:.2f}s, SERVING {to_serving:.2f}s after restart"
        )

        state = ledger(stack, account)
        assert len(state.records) == 2 and state.holds == 0 and state.held == 0
        assert 10_000_000 - state.balance == state.charged > 0


def test_redis_frozen_at_admission_503_within_bound_and_recovers(tmp_path: Path, account: str) -> None:
    """SIGSTOP: connections hang instead of failing. The sidecar's Redis timeout answers first."""
    with fault_stack(tmp_path, sidecar_env={"CRITIQUE_HOLD_TTL_S": "3", "CRITIQUE_REQUEST_DEADLINE_S": "2"}) as stack:
        key = funded(stack, account)
        assert post(stack, key, body("warm up"))[0].status_code == 200
        seen_before = upstream_count(stack)

        stack.send_signal("redis", signal.SIGSTOP)
        try:
            timings = []
            for i in range(3):
                r, elapsed = post(stack, key, body(f"frozen {i}"))
                assert_service_unavailable(r, elapsed, f"frozen {i}")
                timings.append(round(elapsed, 2))
            wait_health(stack, NOT_SERVING)
            assert upstream_count(stack) == seen_before
        finally:
            stack.send_signal("redis", signal.SIGCONT)
        wait_health(stack, SERVING)
        print(f"redis frozen: 503 in {timings}s")

        # A hold whose placement timed out may still land when Redis thaws (the command was
        # already in its socket); the client got 503 for it. It must expire and be swept.
        hold_ttl_passed = time.time() + 3.5
        wait_until(lambda: time.time() > hold_ttl_passed, "hold ttl passed", timeout=10)
        r, _ = post(stack, key, body("after thaw"))
        assert r.status_code == 200, r.text
        state = ledger(stack, account)
        assert state.holds == 0 and state.held == 0
        assert len(state.records) == 2  # the warm-up and the last one: the 503s were never charged
        assert 10_000_000 - state.balance == state.charged


def test_redis_killed_at_settlement_journals_and_replays_once(tmp_path: Path, account: str) -> None:
    with fault_stack(tmp_path) as stack:
        key = funded(stack, account)
        marker = "settle-outage [[slow:1500]]"
        inflight = Background(lambda: post(stack, key, body(marker, max_tokens=30)))
        wait_until(lambda: upstream_saw(stack, "settle-outage"), "upstream received the request", timeout=20)
        stack.stop("redis", signal.SIGKILL)  # the hold is in Redis (fsynced); the settlement will fail

        r, elapsed = inflight.get()
        assert r.status_code == 200, r.text  # the client still gets its response
        assert r.json()["usage"]["completion_tokens"] == 12
        charged = r.headers["x-critique-credits-charged"]
        request_id = r.headers["x-critique-request-id"]
        assert charged and float(charged) > 0
        pending = journal(stack)
        assert [j["request_id"] for j in pending] == [request_id]  # fsynced before the response went out
        assert pending[0]["credits"] > 0 and pending[0]["account"] == account

        restart_redis(stack)
        t0 = time.monotonic()
        wait_until(lambda: not journal_path(stack).exists(), "journal drained", timeout=20)
        drained_s = time.monotonic() - t0
        state = ledger(stack, account)
        assert state.request_ids() == [request_id]  # exactly one charge
        assert state.holds == 0 and state.held == 0
        assert 10_000_000 - state.balance == state.charged == pending[0]["credits"]
        print(f"settlement outage: response in {elapsed:.2f}s, journal drained {drained_s:.2f}s after Redis returned")

        # The next requests settle normally and the charge was not applied again.
        assert post(stack, key, body("after"))[0].status_code == 200
        state = ledger(stack, account)
        assert len(state.records) == 2 and len(set(state.request_ids())) == 2


def test_sidecar_restart_replays_a_left_over_journal_once(tmp_path: Path, account: str) -> None:
    """Served during an outage, the sidecar dies before Redis returns (SIGKILL: no shutdown
    flush). The next sidecar replays the journal at startup; a copy of the same journal fed to
    it again charges nothing more (replay is idempotent by request id)."""
    with fault_stack(tmp_path) as stack:
        key = funded(stack, account)
        inflight = [
            Background(functools.partial(post, stack, key, body(f"left-over {i} [[slow:1500]]"))) for i in range(3)
        ]
        wait_until(
            lambda: sum(upstream_saw(stack, f"left-over {i}") for i in range(3)) == 3,
            "upstream got all three",
            timeout=20,
        )
        stack.stop("redis", signal.SIGKILL)
        responses = [b.get()[0] for b in inflight]
        assert [r.status_code for r in responses] == [200, 200, 200]
        ids = sorted(r.headers["x-critique-request-id"] for r in responses)
        assert sorted(j["request_id"] for j in journal(stack)) == ids

        stack.stop("sidecar", signal.SIGKILL)
        left_over = journal_path(stack).read_bytes()
        restart_redis(stack)
        assert ledger(stack, account).records == []  # nothing replayed yet: the sidecar is down
        restart_sidecar(stack)
        wait_until(lambda: not journal_path(stack).exists(), "startup replay", timeout=20)
        state = ledger(stack, account)
        assert sorted(state.request_ids()) == ids
        assert state.holds == 0 and 10_000_000 - state.balance == state.charged

        # The same journal again (a replay interrupted before it could truncate): no new charge.
        stack.stop("sidecar", signal.SIGKILL)
        journal_path(stack).write_bytes(left_over)
        restart_sidecar(stack)
        wait_until(lambda: not journal_path(stack).exists(), "second replay", timeout=20)
        again = ledger(stack, account)
        assert sorted(again.request_ids()) == ids and again.balance == state.balance
