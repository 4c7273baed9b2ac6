"""Settings -> Connections in a real headless Chromium (Debian `chromium`, driven by Playwright)
against the running stack, every API call through the real Envoy: each of the six controls is
changed in the page and takes effect on the next inference request (openai SDK); a bad value
shows an inline error and changes nothing; a key created in the page works with the openai
SDK, and once revoked in the page gets a 401. Screenshots: tests/artifacts/connections-*.png."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.async_api import expect

from critique_sidecar.core.scopes import SETTINGS_PATH
from critique_sidecar.devtools.stack import Stack, wait_until

from .helpers import client, expected_charge
from .test_dashboard_page import CHROMIUM, CHROMIUM_ARGS, png_size

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MODEL = "deepseek/deepseek-v4-flash"


@pytest.fixture
async def page(stack: Stack) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    assert Path(CHROMIUM).exists(), "no chromium: run `make install` (installs Debian's chromium)"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            await browser.close()


def chat(stack: Stack, key: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, error code) of one small chat request through Envoy (openai SDK)."""
    try:
        raw = client(stack, key).chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=16
        )
        return raw.http_response.status_code, dict(raw.headers), ""
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        return exc.status_code, dict(exc.response.headers), str(body.get("code", ""))


def get_json(url: str, token: str, **params: str) -> Any:
    r = httpx.get(url, params=params, headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"connections-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    width, height = png_size(path.read_bytes())
    assert width == 1280 and height >= 900


async def save(page: Any, **fields: Any) -> None:
    """Set controls in the page (bool: a switch; str: a text field) and save."""
    for name, value in fields.items():
        if isinstance(value, bool):
            await page.set_checked(f"#conn-{name}", value)
        else:
            await page.fill(f"#conn-{name}", value)
    await page.evaluate("document.getElementById('connections').setAttribute('data-conn-state', 'saving')")
    await page.click("#conn-save")
    await page.wait_for_selector("#connections:is([data-conn-state=saved], [data-conn-state=invalid])", timeout=30_000)


async def test_each_control_takes_effect_and_keys_are_created_and_revoked_in_the_page(
    stack: Stack, account: str, page: Any
) -> None:
    # The page creates read+write keys by default: a key makes only keys weaker than itself.
    owner = stack.create_key(account, "read:inference,write:inference,admin:inference")
    agent = stack.create_key(account, "read:inference,write:inference")["key"]
    stack.cli("credits", "grant", "--account", account, "--credits", "20")
    problems: list[str] = []
    requests: list[str] = []
    page.on("request", lambda req: requests.append(req.url))
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    # Chromium logs every 4xx fetch as a console error; the page's own errors are what count.
    page.on(
        "console",
        lambda m: problems.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None,
    )

    response = await page.goto(stack.base_url + "/inference-dashboard")
    assert response is not None and response.status == 200
    await page.fill("#api-key", owner["key"])
    await page.click("#load")
    await page.wait_for_selector("#connections[data-conn-state=ready]", timeout=30_000)
    assert await page.is_checked("#conn-enabled") and await page.is_checked("#conn-block_when_cap_reached")
    assert await page.input_value("#conn-reserve_credits_for_review") == "0.000000"
    assert chat(stack, agent)[0] == 200

    # Each control, then the next request: refused (or warned, or priced) as the setting says.
    await save(page, enabled=False)
    assert chat(stack, agent)[::2] == (403, "inference_disabled")
    await shot(page, "disabled")
    await save(page, enabled=True, daily_credit_cap="0")
    assert chat(stack, agent)[::2] == (429, "daily_credit_cap_reached")
    await save(page, daily_credit_cap="", monthly_credit_cap="0")
    assert chat(stack, agent)[::2] == (429, "monthly_credit_cap_reached")
    await save(page, monthly_credit_cap="", daily_request_cap="0")
    assert chat(stack, agent)[::2] == (429, "daily_request_cap_reached")
    await save(page, daily_request_cap="", reserve_credits_for_review="1000")
    assert chat(stack, agent)[::2] == (402, "insufficient_credits")
    await save(page, reserve_credits_for_review="0", daily_credit_cap="0", block_when_cap_reached=False)
    status, headers, _ = chat(stack, agent)
    assert status == 200 and "daily_credit_cap_reached" in headers.get("x-critique-warning", "")
    await save(page, daily_credit_cap="", block_when_cap_reached=True, deepseek_training_opt_in=True)
    raw = client(stack, agent).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Opt-in pricing, please."}], max_tokens=16
    )
    usage = raw.parse().usage
    assert usage is not None
    opt_in_credits, _ = expected_charge(MODEL, usage.prompt_tokens, usage.completion_tokens, opt_in=True)
    full_credits, _ = expected_charge(MODEL, usage.prompt_tokens, usage.completion_tokens)
    assert raw.headers["x-critique-credits-charged"] == opt_in_credits != full_credits
    await save(page, deepseek_training_opt_in=False)
    settings = get_json(stack.base_url + SETTINGS_PATH, owner["key"])
    assert settings["deepseek_training_opt_in"] is False and settings["daily_credit_cap"] is None
    assert chat(stack, agent)[0] == 200

    # A bad value: an inline error at the field, nothing saved.
    await save(page, daily_credit_cap="-5")
    assert await page.get_attribute("#connections", "data-conn-state") == "invalid"
    error = await page.text_content("#conn-daily_credit_cap-error") or ""
    assert "daily_credit_cap" in error and "negative" in error
    assert await page.get_attribute("[data-field=daily_credit_cap]", "class") == "field invalid"
    await shot(page, "invalid")
    again = get_json(stack.base_url + SETTINGS_PATH, owner["key"])
    assert again == settings
    await page.fill("#conn-daily_credit_cap", "")  # back to what is saved: nothing to send
    await page.click("#conn-save")
    # expect() polls over the driver protocol: wait_for_function with a string would be evaluated
    # in the page, which its strict CSP (no 'unsafe-eval') refuses once it has to poll.
    await expect(page.locator("#conn-save-msg")).to_have_text("Nothing changed.", timeout=30_000)

    # A key made in the page: its secret shown once, usable with the openai SDK, then revoked.
    await page.fill("#newkey-name", "made-in-the-page")
    await page.click("#newkey-create")
    await page.wait_for_selector("#newkey-secret:not([hidden])", timeout=30_000)
    key_id = await page.text_content("#newkey-secret-id")
    secret = await page.text_content("#newkey-secret-value") or ""
    assert secret.startswith("crt_") and key_id
    await page.wait_for_selector(f"#conn-keys tr[data-key-id='{key_id}'][data-revoked=false]")
    assert secret not in (await page.inner_text("#conn-keys"))  # the list never shows a secret
    await shot(page, "new-key")
    completion = client(stack, secret).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello from a new key."}], max_tokens=16
    )
    assert completion.choices[0].message.content

    await page.click(f"button.revoke[data-key-id='{key_id}']")
    await page.wait_for_selector(f"#conn-keys tr[data-key-id='{key_id}'][data-revoked=true]", timeout=30_000)
    assert await page.is_hidden("#newkey-secret")
    wait_until(lambda: chat(stack, secret)[::2] == (401, "invalid_api_key"), "revoked key refused", timeout=10)
    await shot(page, "revoked")

    assert problems == []
    assert requests and all(u.startswith(stack.base_url + "/") for u in requests), requests
    # The page's changes are in the account's audit trail, made by the owner's key.
    token = stack.operator_token("audit")
    trail = get_json(f"{stack.provision_url}/v1/accounts/{account}/audit", token, limit="100")["data"]
    mine = [(e["action"], e["actor"]["type"], e["actor"]["id"]) for e in trail]
    assert ("key.create", "key", owner["key_id"]) in mine and ("key.revoke", "key", owner["key_id"]) in mine
    patches = [e for e in trail if e["action"] == "settings.patch"]
    assert len(patches) == 8 and all(e["actor"]["id"] == owner["key_id"] for e in patches)  # one per save
    assert patches[-1]["before"]["enabled"] is True and patches[-1]["after"]["enabled"] is False


async def test_a_key_without_admin_can_read_but_not_change(stack: Stack, account: str, page: Any) -> None:
    reader = stack.create_key(account, "read:inference")
    await page.goto(stack.base_url + "/inference-dashboard")
    await page.fill("#api-key", reader["key"])
    await page.click("#load")
    await page.wait_for_selector("#connections[data-conn-state=ready]", timeout=30_000)
    await page.wait_for_selector(f"#conn-keys tr[data-key-id='{reader['key_id']}']")
    await save(page, daily_request_cap="5")
    assert "admin:inference" in (await page.text_content("#conn-save-msg") or "")
    await page.click("#newkey-create")
    await expect(page.locator("#newkey-msg")).to_contain_text("insufficient_scope", timeout=30_000)
    assert await page.is_hidden("#newkey-secret")
