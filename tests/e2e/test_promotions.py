"""Promotions end to end, with a catalog whose promotion is current (the built-in one's ended
on 2026-06-20): a stack started with CRITIQUE_CATALOG_PATH=tests/e2e/catalogs/current_promotion.toml,
through both front doors. Charges worked out by hand from that catalog."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.devtools.stack import FRONT_DOORS, Stack

from .helpers import FrontDoor, balance, client, front_door, funded_key, usage_records

CATALOG_PATH = Path(__file__).parent / "catalogs" / "current_promotion.toml"
MSG = [{"role": "user", "content": "Summarize this retry policy in three bullets."}]  # 12 prompt tokens


@pytest.fixture(scope="module")
def promo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("promotions"),
        sidecar_env={"CRITIQUE_CATALOG_PATH": str(CATALOG_PATH)},
        front_doors=FRONT_DOORS,
    )
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(params=FRONT_DOORS)
def door(request: pytest.FixtureRequest, promo_stack: Stack) -> FrontDoor:
    return front_door(promo_stack, request.param)


def test_the_test_catalog_is_the_built_in_one_plus_promotions() -> None:
    built_in, test = load_catalog(), load_catalog(CATALOG_PATH)
    assert [(m.id, m.upstream, m.price) for m in test.models] == [(m.id, m.upstream, m.price) for m in built_in.models]


# 12 prompt and 12 completion tokens; 1 credit = 0.01 USD, so P USD per million tokens is
# 100 * P micro-credits a token:
#   nemotron, intro-50-off current (0.30 / 1.20): 12 * 30 + 12 * 120 = 1800     USD 0.000018
#   tencent, one promotion ended and one not started: list 0.0567 / 0.189,
#     12 * 5.67 + 12 * 18.9 = 294.84 -> 295 (rounded up)                          USD 0.0000029484
@pytest.mark.parametrize(
    "model, credits, usd, version",
    [
        ("nvidia/nemotron-3-ultra-550b-a55b", "0.001800", "0.000018", "nvidia/nemotron-3-ultra-550b-a55b/promo:intro-50-off"),
        ("tencent/hy3-preview", "0.000295", "0.0000029484", "tencent/hy3-preview/list"),
    ],
)  # fmt: skip
def test_a_current_promotion_is_charged_and_recorded(
    promo_stack: Stack, door: FrontDoor, account: str, model: str, credits: str, usd: str, version: str
) -> None:
    key = funded_key(promo_stack, account, "10")
    raw = client(door, key).chat.completions.with_raw_response.create(model=model, messages=MSG, max_tokens=50)
    usage = raw.parse().usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (12, 12)
    assert (raw.headers["x-critique-credits-charged"], raw.headers["x-critique-estimated-usd"]) == (credits, usd)
    [record] = usage_records(promo_stack, account)
    assert record["price_version"] == f"v5.2-test-promotions/{version}" and record["usd"] == usd
    assert Decimal(10) - balance(promo_stack, account) == Decimal(credits)
