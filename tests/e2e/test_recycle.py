"""Recycling under traffic (recycle.py): two sidecar processes behind the real Envoy, the first
set to recycle after a few dozen requests. While chat requests (JSON and slow streams) keep
coming, it turns NOT_SERVING, Envoy moves new streams to its sibling, its open streams finish
and settle, and it exits 0; the test plays the supervisor and starts it again. No request
fails and every one is charged exactly once."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest

from critique_sidecar.devtools.stack import Stack, wait_until

from .faultkit import CHAT_PATH, SERVING, health
from .helpers import balance, both_sidecars_healthy, funded_key, started, usage_records

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

RECYCLE_AFTER = 20
REQUESTS = 100
WORKERS = 6
CHARGE_RE = re.compile(rb"x-critique-request-id=(\S+) x-critique-credits-charged=([0-9.]+)")


@dataclass
class RecyclingStack(Stack):
    """Only the first sidecar process recycles (so the sibling is there to take the traffic)."""

    def sidecar_environ(self, index: int = 0) -> dict[str, str]:
        env = super().sidecar_environ(index)
        if index == 0:
            env["CRITIQUE_RECYCLE_AFTER_REQUESTS"] = str(RECYCLE_AFTER)
        return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with started(RecyclingStack(tmp_path_factory.mktemp("recycle"), sidecar_count=2), two_sidecars=True) as s:
        yield s


def _one(stack: Stack, key: str, i: int) -> tuple[int, str, Decimal]:
    """One request; (status, request id, credits charged) from the headers or the SSE comment."""
    stream = i % 3 == 0
    content = "[[slow:30]] [[tokens:8]] recycle" if stream else "recycle"
    body = {"model": "deepseek/deepseek-v4-flash", "messages": [{"role": "user", "content": content}], "stream": stream}
    with httpx.stream(
        "POST", stack.base_url + CHAT_PATH, headers={"authorization": f"Bearer {key}"}, json=body, timeout=30
    ) as r:
        raw = r.read()
    if r.status_code != 200:
        return r.status_code, raw.decode(errors="replace")[:200], Decimal(0)
    if stream:
        m = CHARGE_RE.search(raw)
        assert m is not None, raw[-300:]
        return 200, m.group(1).decode(), Decimal(m.group(2).decode())
    return 200, r.headers["x-critique-request-id"], Decimal(r.headers["x-critique-credits-charged"])


def test_a_recycle_under_traffic_loses_no_request_and_charges_each_once(stack: Stack, account: str) -> None:
    key = funded_key(stack, account, "10")
    first = stack.procs["sidecar"]
    restarted = threading.Event()

    def supervisor() -> None:  # what systemd or the kubelet does: start the process again
        first.wait(timeout=120)
        stack.start_sidecar(0)
        restarted.set()

    watcher = threading.Thread(target=supervisor, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda i: _one(stack, key, i), range(REQUESTS)))

    failed = [r for r in results if r[0] != 200]
    assert failed == [], failed
    # The drain may outlast the traffic: wait for the supervisor to see the exit (returncode is
    # only set once it has waited for the process).
    assert restarted.wait(timeout=90)
    assert first.returncode == 0  # it drained and exited by itself, not killed
    assert "recycling" in (stack.workdir / "sidecar.log").read_text()

    records = usage_records(stack, account)
    ids = [rid for _, rid, _ in results]
    assert len(set(ids)) == REQUESTS and sorted(r["request_id"] for r in records) == sorted(ids)
    charged = sum(c for _, _, c in results)
    assert sum(int(r["credits"]) for r in records) == charged * 1_000_000
    assert Decimal(10) - balance(stack, account) == charged
    assert '"held": "0.000000"' in stack.cli("credits", "show", "--account", account, "--json")

    # The supervisor's fresh process serves again.
    wait_until(
        lambda: health(stack, 0) == SERVING and both_sidecars_healthy(stack), "restarted sidecar healthy", timeout=30
    )
