"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai

from critique_sidecar.core.catalog import load_catalog, price_for
from critique_sidecar.core.clock import utc_now
from critique_sidecar.core.money import format_credits, usd_for_tokens, usd_to_micro_credits
from critique_sidecar.devtools.stack import Stack

USD_PER_CREDIT = Decimal("0.01")  # the sidecar's default
CATALOG = load_catalog()


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


def expected_charge(model: str, prompt: int, completion: int, opt_in: bool = False) -> tuple[str, str]:
    """(credits header, usd header) computed independently from the catalog price."""
    price = price_for(CATALOG, CATALOG.model(model), utc_now(), opt_in)  # type: ignore[arg-type]
    usd = usd_for_tokens(prompt, completion, price.input, price.output)
    return format_credits(usd_to_micro_credits(usd, USD_PER_CREDIT)), format(usd.normalize(), "f")


def upstream_seen(stack: Stack) -> list[dict[str, Any]]:
    return httpx.get(f"http://127.0.0.1:{stack.ports['upstream']}/_fake/requests").json()  # type: ignore[no-any-return]


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
