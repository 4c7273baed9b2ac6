"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import openai

from critique_sidecar.devtools.stack import Stack, wait_until

from ..integration.clusterkit import redis_cluster

USD_PER_CREDIT = Fraction("0.01")  # the sidecar's default
# USD per million tokens (input, output), copied by hand from catalog.toml: the expectations
# never go through the product's catalog or money code, so a pricing bug there cannot hide in
# them. (test_foundation checks literal charges worked out by hand on top of this.)
LIST_PRICES = {
    "deepseek/deepseek-v4-flash": ("0.15", "0.30"),
    "tencent/hy3-preview": ("0.0567", "0.189"),
    "nvidia/nemotron-3-ultra-550b-a55b": ("0.60", "2.40"),  # its intro promotion ended 2026-06-20
    "example/text-embedding-small": ("0.02", "0"),  # the demo catalog's example embeddings model
}
OPT_IN_PRICES = {"deepseek/deepseek-v4-flash": ("0.0375", "0.075")}


@dataclass(frozen=True)
class FrontDoor:
    """One way into the product: "envoy" (Envoy + the sidecar) or "asgi" (the ASGI gateway)."""

    name: str
    base_url: str
    process: str  # the Stack process that meters requests: "sidecar" or "gateway"

    @property
    def chat_url(self) -> str:
        return self.base_url + "/api/v1/chat/completions"


def front_door(stack: Stack, name: str) -> FrontDoor:
    return FrontDoor(name, stack.url(name), {"envoy": "sidecar", "asgi": "gateway"}[name])


def client(door: Stack | FrontDoor, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=door.base_url + "/api/v1", max_retries=0, timeout=30)


def funded_key(stack: Stack, account: str, credits: str = "10", scopes: str = "read:inference,write:inference") -> str:
    key = stack.create_key(account, scopes)["key"]
    if Decimal(credits) != 0:
        stack.cli("credits", "grant", "--account", account, "--credits", credits)
    return str(key)


def balance(stack: Stack, account: str) -> Decimal:
    import json

    return Decimal(json.loads(stack.cli("credits", "show", "--account", account, "--json"))["balance"])


def expected_charge(
    model: str, prompt: int, completion: int, opt_in: bool = False, prices: tuple[str, str] | None = None
) -> tuple[str, str]:
    """(credits header, usd header) from the hand-copied prices above (or `prices`): exact
    fractions, the credits rounded up to the next whole micro-credit."""
    p_in, p_out = prices or (OPT_IN_PRICES[model] if opt_in and model in OPT_IN_PRICES else LIST_PRICES[model])
    usd = (Fraction(p_in) * prompt + Fraction(p_out) * completion) / 1_000_000
    micro = math.ceil(usd / USD_PER_CREDIT * 1_000_000)
    with localcontext() as ctx:
        ctx.prec = 50  # the fraction's denominator is 2^a 5^b: its decimal expansion ends
        usd_text = format((Decimal(usd.numerator) / Decimal(usd.denominator)).normalize(), "f")
    return f"{micro // 1_000_000}.{micro % 1_000_000:06d}", usd_text


def upstream_seen(stack: Stack) -> list[dict[str, Any]]:
    """The fake model server's last 200 requests, oldest first, each with its number `n`."""
    return httpx.get(f"http://127.0.0.1:{stack.ports['upstream']}/_fake/requests").json()  # type: ignore[no-any-return]


def upstream_count(stack: Stack) -> int:
    """How many requests the fake model server has received in all (its last one's number)."""
    seen = upstream_seen(stack)
    return int(seen[-1]["n"]) if seen else 0


def upstream_since(stack: Stack, count: int) -> list[dict[str, Any]]:
    """The requests the fake model server received after it had received `count`."""
    return [s for s in upstream_seen(stack) if s["n"] > count]


def usage_records(stack: Stack, account: str) -> list[dict[str, str]]:
    """The account's usage records as written by settlement (the ledger's own stream)."""
    import redis

    from critique_sidecar.store import keyspace

    with redis.Redis.from_url(str(stack.redis_url), decode_responses=True) as r:
        return [fields for _, fields in r.xrange(keyspace.usage_stream(account))]


def wait_for_records(stack: Stack, account: str, count: int, timeout: float = 10.0) -> list[dict[str, str]]:
    """Settlement after a cut or disconnect happens when the front door sees the exchange end
    (Envoy closes the ext_proc stream, or the ASGI app returns); wait for it by polling the
    ledger (a condition, not a fixed sleep)."""
    from critique_sidecar.devtools.stack import wait_until

    wait_until(lambda: len(usage_records(stack, account)) >= count, f"{count} usage record(s)", timeout=timeout)
    return usage_records(stack, account)


@contextmanager
def stack_on(store: str, workdir: Path, **options: Any) -> Iterator[Stack]:
    """A Stack, not started yet, on a Redis of its own (store "redis") or on a Redis Cluster of
    three masters (store "cluster"; the sidecars with CRITIQUE_REDIS_CLUSTER=true)."""
    if store == "redis":
        yield Stack(workdir, **options)
        return
    with redis_cluster(workdir / "cluster") as ports:
        url = f"redis://127.0.0.1:{ports[0]}/0"
        yield Stack(workdir, redis_url=url, sidecar_env={"CRITIQUE_REDIS_CLUSTER": "true"}, **options)


@contextmanager
def started(stack: Stack, two_sidecars: bool = False) -> Iterator[Stack]:
    """`stack` started, and stopped at the end. With two sidecar processes, Envoy has seen both
    healthy before it is used (else the first requests would all go to one)."""
    try:
        stack.start()
        if two_sidecars:
            wait_until(lambda: both_sidecars_healthy(stack), "both sidecars healthy in Envoy", timeout=30)
        yield stack
    finally:
        stack.stop()


def sidecar_hosts(stack: Stack) -> dict[int, dict[str, Any]]:
    """Envoy's view of the sidecar_grpc endpoints: port -> {healthy, rq_total}."""
    text = httpx.get(f"http://127.0.0.1:{stack.ports['admin']}/clusters", timeout=5).text
    hosts: dict[int, dict[str, Any]] = {}
    for m in re.finditer(r"^sidecar_grpc::127\.0\.0\.1:(\d+)::(rq_total|health_flags)::(.*)$", text, re.M):
        h = hosts.setdefault(int(m.group(1)), {})
        if m.group(2) == "rq_total":
            h["rq_total"] = int(m.group(3))
        else:
            h["healthy"] = m.group(3).strip() == "healthy"
    return hosts


def both_sidecars_healthy(stack: Stack) -> bool:
    hosts = sidecar_hosts(stack)
    return len(hosts) == 2 and all(h["healthy"] for h in hosts.values())
