"""The dashboard page in a real headless Chromium (Debian `chromium`, driven by Playwright)
against the running stack after real traffic through Envoy: the charts, tables, limit bars and
the paginated activity log show exactly what the dashboard API returns. A screenshot is saved
to tests/artifacts/dashboard.png."""

from __future__ import annotations

import shutil
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from critique_sidecar.core.scopes import DASHBOARD_PATH
from critique_sidecar.devtools.stack import Stack, wait_until
from critique_sidecar.store import keyspace

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip
PAGE_SIZE = 25  # the page's activity page size
MODELS = ["deepseek/deepseek-v4-flash", "tencent/hy3-preview", "nvidia/nemotron-3-ultra-550b-a55b"]


def api(stack: Stack, key: str, **params: Any) -> dict[str, Any]:
    r = httpx.get(
        stack.base_url + DASHBOARD_PATH, params=params, headers={"authorization": f"Bearer {key}"}, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    assert Path(CHROMIUM).exists(), "no chromium: run `make install` (installs Debian's chromium)"
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def test_dashboard_page_shows_what_the_api_returns(stack: Stack, account: str, browser: Any) -> None:
    agent = stack.create_key(account, "read:inference,write:inference")
    second = stack.create_key(account, "write:inference")
    stack.cli("credits", "grant", "--account", account, "--credits", "40")
    stack.cli("credits", "grant", "--account", account, "--credits", "0.05", "--category", "promotional",
              "--expires-at", "2099-01-01T00:00:00Z", "--priority", "10")  # fmt: skip
    stack.cli("settings", "set", "--account", account, "--daily-credit-cap", "0.5", "--monthly-credit-cap", "20",
              "--daily-request-cap", "500", "--reserve-floor", "5")  # fmt: skip
    sent = 0
    for i in range(PAGE_SIZE + 4):  # more than one activity page
        key = agent if i % 5 else second
        client = openai.OpenAI(api_key=key["key"], base_url=stack.base_url + "/api/v1", max_retries=0, timeout=30)
        client.chat.completions.create(
            model=MODELS[i % 3],
            messages=[{"role": "user", "content": f"Explain idempotent retries, take {i}."}],
            max_tokens=30 + i,
        )
        sent += 1

    import redis

    with redis.Redis.from_url(str(stack.redis_url)) as r:
        wait_until(lambda: r.xlen(keyspace.usage_stream(account)) >= sent, "usage records", timeout=15)

    summary = api(stack, agent["key"], days="30")
    first = api(stack, agent["key"], view="activity", limit=str(PAGE_SIZE))
    assert summary["totals"]["requests"] == sent and first["has_more"] is True
    second_page = api(stack, agent["key"], view="activity", limit=str(PAGE_SIZE), cursor=first["next_cursor"])

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    response = await page.goto(stack.base_url + "/inference-dashboard")
    assert response is not None and response.status == 200
    assert "default-src 'none'" in (await response.header_value("content-security-policy") or "")
    await page.fill("#api-key", agent["key"])
    await page.click("#load")
    await page.wait_for_selector("body[data-state=ready]", timeout=15_000)

    # Totals and the credits chart: one bar per UTC day, each carrying the API's exact value.
    assert await page.text_content("#total-credits") == summary["totals"]["credits"]
    assert (await page.text_content("#total-requests") or "").replace(",", "") == str(sent)
    assert (await page.text_content("#total-input") or "").replace(",", "") == str(summary["totals"]["input_tokens"])
    bars = await page.eval_on_selector_all(
        "#credits-chart rect.bar",
        "els => els.map(e => [e.dataset.date, e.dataset.value, Number(e.getAttribute('height'))])",
    )
    assert [[d, v] for d, v, _ in bars] == [[d["date"], d["credits"]] for d in summary["daily"]]
    assert [d for d, _, h in bars if h > 0] == [d["date"] for d in summary["daily"] if d["credits"] != "0.000000"]
    assert bars[-1][2] > 0  # today's bar is drawn
    tokens = await page.eval_on_selector_all(
        "#tokens-chart rect.bar", "els => els.map(e => [e.dataset.date, e.dataset.series, Number(e.dataset.value)])"
    )
    expected_tokens = [[d["date"], s, d[s]] for d in summary["daily"] for s in ("input_tokens", "output_tokens")]
    assert tokens == expected_tokens

    # Attribution tables.
    models = await page.eval_on_selector_all(
        "#models-table tbody tr",
        "rows => rows.map(r => [r.dataset.model, r.querySelector('[data-col=credits]').textContent, r.querySelector('[data-col=requests]').dataset.value])",
    )
    assert models == [[m["model"], m["credits"], str(m["requests"])] for m in summary["by_model"]]
    # Grants, in spend order: the promotional one first (it spent first), then the paid one.
    grants = await page.eval_on_selector_all(
        "#grants-table tbody tr",
        "rows => rows.map(r => ['remaining', 'held', 'expires_at'].reduce((o, c) =>"
        " (o.push(r.querySelector('[data-col=' + c + ']').textContent), o), [r.dataset.grant]))",
    )
    assert grants == [[g["id"], g["remaining"], g["held"], g["expires_at"] or "never"] for g in summary["grants"]]
    assert [(g[0], g[3]) for g in grants] == [("g2", "2099-01-01T00:00:00Z"), ("g1", "never")]
    assert summary["grants"][0]["remaining"] != "0.050000"  # the promotional grant paid first
    endpoints = await page.eval_on_selector_all(
        "#endpoints-table tbody tr",
        "rows => rows.map(r => [r.dataset.endpoint, r.querySelector('[data-col=credits]').textContent])",
    )
    assert endpoints == [[e["endpoint"], e["credits"]] for e in summary["by_endpoint"]] and endpoints
    keys = await page.eval_on_selector_all(
        "#keys-table tbody tr",
        "rows => rows.map(r => [r.dataset.keyId, r.querySelector('[data-col=credits]').textContent])",
    )
    assert keys == [[k["key_id"], k["credits"]] for k in summary["by_key"]]
    assert {k[0] for k in keys} == {agent["key_id"], second["key_id"]}

    # Limit bars.
    limits = await page.eval_on_selector_all(
        "#limits .limit",
        "els => els.map(e => [e.dataset.limit, e.dataset.spent || e.dataset.balance, e.dataset.cap || e.dataset.floor, e.dataset.percent || ''])",
    )
    caps = [n for n, v in summary["limits"].items() if isinstance(v, dict) and v.get("mechanism") == "cap"]
    assert caps[:3] == ["daily_request_cap", "daily_credit_cap", "monthly_credit_cap"]  # the limit table's order
    want = [
        [
            name,
            str(summary["limits"][name]["spent"]),
            None if summary["limits"][name]["cap"] is None else str(summary["limits"][name]["cap"]),
            summary["limits"][name]["percent"] or "",
        ]
        for name in caps
    ]
    assert limits == [*want, ["balance", summary["balance"]["balance"], summary["balance"]["reserve_floor"], ""]]
    fill = await page.eval_on_selector("[data-limit=daily_request_cap] .fill", "e => e.style.width")
    assert fill == f"{min(100.0, float(summary['limits']['daily_request_cap']['percent'])):g}%"

    # Activity log, page 1, then Next.
    async def activity_ids() -> list[str]:
        return await page.eval_on_selector_all("#activity-table tbody tr", "rows => rows.map(r => r.dataset.requestId)")  # type: ignore[no-any-return]

    assert await activity_ids() == [r["request_id"] for r in first["data"]]
    cells = await page.eval_on_selector_all(
        "#activity-table tbody tr:first-child td",
        "tds => Object.fromEntries(tds.map(t => [t.dataset.col, t.dataset.value]))",
    )
    top = first["data"][0]
    assert cells["credits"] == top["credits"] and cells["model"] == top["model"] and cells["key_id"] == top["key_id"]
    assert (
        cells["output_tokens"] == str(top["output_tokens"])
        and cells["endpoint"] == top["endpoint"] == "chat.completions"
    )
    assert cells["cached_input_tokens"] == str(top["cached_input_tokens"])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    width, height = png_size(data)
    assert width == 1280 and height >= 900 and len(data) > 30_000  # a rendered page, not a blank one

    await page.click("#activity-next")
    await page.wait_for_selector("#activity-table[data-page='2']", timeout=10_000)
    await page.wait_for_selector("body[data-state=ready]")
    assert await activity_ids() == [r["request_id"] for r in second_page["data"]]
    assert await page.is_disabled("#activity-next") is (not second_page["has_more"])
    await page.click("#activity-first")
    await page.wait_for_selector("#activity-table[data-page='1']")
    await page.wait_for_selector("body[data-state=ready]")
    assert (await activity_ids())[: len(first["data"])] == [r["request_id"] for r in first["data"]]

    # The 7 / 90 day switch redraws from the API.
    for days in ("7", "90"):
        await page.click(f"#range button[data-days='{days}']")
        await page.wait_for_selector(f"#credits-chart[data-days='{days}']", timeout=10_000)
        await page.wait_for_selector("body[data-state=ready]")
        again = api(stack, agent["key"], days=days)
        values = await page.eval_on_selector_all("#credits-chart rect.bar", "els => els.map(e => e.dataset.value)")
        assert values == [d["credits"] for d in again["daily"]]

    # Offline-capable: every request the page made went to the page's own origin, no errors.
    assert requests and all(u.startswith(stack.base_url + "/") for u in requests), requests
    assert problems == []
    # A bad key is reported, not rendered.
    await page.fill("#api-key", "crt_" + "A" * 38)
    await page.click("#load")
    await page.wait_for_selector("body[data-state=error]", timeout=10_000)
    assert "invalid_api_key" in (await page.text_content("#status") or "")
    await page.close()


# >>> limits
async def test_dashboard_page_shows_rate_limits_and_each_keys_limits(stack: Stack, account: str, browser: Any) -> None:
    import json

    model = MODELS[0]
    agent = json.loads(
        stack.cli(
            "keys",
            "create",
            "--account",
            account,
            "--scopes",
            "read:inference,write:inference",
            "--json",
            "--rpm",
            "30",
            "--tpm",
            "50000",
            "--max-concurrent",
            "3",
            "--daily-credit-cap",
            "2",
            "--models",
            model,
            "--expires-at",
            "2099-01-01",
        )
    )
    stack.cli("credits", "grant", "--account", account, "--credits", "10")
    stack.cli("settings", "set", "--account", account, "--rpm", "100", "--max-concurrent", "10")
    client = openai.OpenAI(api_key=agent["key"], base_url=stack.base_url + "/api/v1", max_retries=0, timeout=30)
    for i in range(3):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"limits {i}"}], max_tokens=20
        )

    import redis

    with redis.Redis.from_url(str(stack.redis_url)) as r:
        wait_until(lambda: r.xlen(keyspace.usage_stream(account)) >= 3, "usage records", timeout=15)
    summary = api(stack, agent["key"])
    rpm = summary["limits"]["requests_per_minute"]
    assert (rpm["limit"], rpm["used"], rpm["remaining"], rpm["reached"]) == (100, 3, 97, False)
    assert summary["limits"]["tokens_per_minute"]["limit"] is None
    assert summary["limits"]["max_concurrent"] == {
        "mechanism": "concurrency", "label": "Requests in flight", "unit": "requests",
        "limit": 10, "in_flight": 0, "reached": False,
    }  # fmt: skip
    [row] = summary["by_key"]
    assert row["limits"] == agent["controls"]

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(stack.base_url + "/inference-dashboard")
    await page.fill("#api-key", agent["key"])
    await page.click("#load")
    await page.wait_for_selector("body[data-state=ready]", timeout=15_000)
    shown = await page.eval_on_selector_all(
        "#limits .limit[data-used]", "els => els.map(e => [e.dataset.limit, e.dataset.used, e.dataset.cap])"
    )
    assert shown == [["requests_per_minute", "3", "100"], ["max_concurrent", "0", "10"]]  # unset: not shown
    cell = await page.text_content(f"#keys-table tr[data-key-id='{agent['key_id']}'] [data-col=limits]") or ""
    for part in ("30 req/min", "50,000 tokens/min", "3 in flight", "2.000000 credits/day", f"models: {model}",
                 "expires 2099-01-01 00:00:00 UTC"):  # fmt: skip
        assert part in cell, cell
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-limits.png"), full_page=True)
    await page.close()


# <<< limits


async def test_dashboard_page_shows_end_users_and_finds_them_by_prefix(
    stack: Stack, account: str, browser: Any
) -> None:
    agent = stack.create_key(account, "read:inference,write:inference")
    stack.cli("credits", "grant", "--account", account, "--credits", "40")
    client = openai.OpenAI(api_key=agent["key"], base_url=stack.base_url + "/api/v1", max_retries=0, timeout=30)
    users = [f"shop/customer-{i:02d}" for i in range(12)] + ["lab/<b>bold</b>"]
    for i, user in enumerate(users):
        for _ in range(1 + i % 3):  # different totals, so the ranking is by credits
            client.chat.completions.create(
                model=MODELS[0], messages=[{"role": "user", "content": f"[[tokens:{10 + i}]] hi"}], user=user
            )
    client.chat.completions.create(model=MODELS[0], messages=[{"role": "user", "content": "no end user"}])

    summary = api(stack, agent["key"], days="30")
    assert len(summary["by_end_user"]) == 10 and summary["end_users_more"] is True
    found = api(stack, agent["key"], view="end_users", days="30", prefix="lab/", limit="10")
    assert [r["end_user"] for r in found["data"]] == ["lab/<b>bold</b>"]

    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    await page.goto(stack.base_url + "/inference-dashboard")
    await page.fill("#api-key", agent["key"])
    await page.click("#load")
    await page.wait_for_selector("body[data-state=ready]", timeout=15_000)

    async def rows() -> list[list[str]]:
        return await page.eval_on_selector_all(  # type: ignore[no-any-return]
            "#end-users-table tbody tr[data-end-user]",
            "rows => rows.map(r => [r.dataset.endUser, r.querySelector('[data-col=credits]').textContent,"
            " r.querySelector('[data-col=requests]').dataset.value])",
        )

    def expected(data: list[dict[str, Any]]) -> list[list[str]]:
        return [[r["end_user"], r["credits"], str(r["requests"])] for r in data]

    assert await rows() == expected(summary["by_end_user"])
    assert "top 10" in (await page.text_content("#end-users-note") or "")

    # Search: the ids with the prefix, the markup in an id shown as text, never as markup.
    await page.fill("#end-user-prefix", "lab/")
    await page.click("#end-user-search button")
    await page.wait_for_selector("#end-users-table[data-prefix='lab/']", timeout=10_000)
    await page.wait_for_selector("body[data-state=ready]")
    assert await rows() == expected(found["data"])
    assert await page.text_content("#end-users-table tbody td[data-col=end_user]") == "lab/<b>bold</b>"
    assert await page.query_selector("#end-users-table b") is None

    shop = api(stack, agent["key"], view="end_users", days="30", prefix="shop/customer-1", limit="10")
    await page.fill("#end-user-prefix", "shop/customer-1")
    await page.click("#end-user-search button")
    await page.wait_for_selector("#end-users-table[data-prefix='shop/customer-1']", timeout=10_000)
    await page.wait_for_selector("body[data-state=ready]")
    assert await rows() == expected(shop["data"]) and len(shop["data"]) == 2

    await page.fill("#end-user-prefix", "nobody")
    await page.click("#end-user-search button")
    await page.wait_for_selector("#end-users-table[data-prefix='nobody']", timeout=10_000)
    await page.wait_for_selector("body[data-state=ready]")
    assert await rows() == [] and "No end user" in (await page.text_content("#end-users-table tbody") or "")

    # Clearing the search shows the top 10 again.
    await page.fill("#end-user-prefix", "")
    await page.click("#end-user-search button")
    await page.wait_for_selector("#end-users-table[data-prefix='']", timeout=10_000)
    await page.wait_for_selector("body[data-state=ready]")
    assert await rows() == expected(summary["by_end_user"])
    assert problems == []
    await page.close()
