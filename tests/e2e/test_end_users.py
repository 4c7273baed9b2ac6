"""End users through both front doors with the official SDKs: the openai SDK's `user` and
`safety_identifier`, the anthropic SDK's `metadata={"user_id": ...}`, and X-Critique-End-User,
which wins over the body. Each usage record names its end user, the dashboard ranks them and
finds them by prefix; the model server sees the body's fields as sent and never the header; a
hostile end user is a 400 naming the field, before any hold."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from critique_sidecar.core.scopes import DASHBOARD_PATH
from critique_sidecar.core.wire import END_USER_HEADER
from critique_sidecar.devtools.stack import Stack

from .helpers import FrontDoor, balance, funded_key, upstream_count, upstream_since, usage_records

MODEL = "deepseek/deepseek-v4-flash"
EMBED = "example/text-embedding-small"
MSGS: Any = [{"role": "user", "content": "[[tokens:5]] hi"}]


def oa(door: FrontDoor, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=door.base_url + "/api/v1", max_retries=0, timeout=60)


def claude(door: FrontDoor, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=door.base_url + "/api", max_retries=0, timeout=60)


def dashboard(stack: Stack, key: str, **params: Any) -> dict[str, Any]:
    r = httpx.get(stack.base_url + DASHBOARD_PATH, params=params, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_the_sdks_name_end_users_and_the_dashboard_shows_them(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    key = funded_key(stack, account)
    before = upstream_count(stack)
    c = oa(front_door, key)
    c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=16, user="acme/alice")
    c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=16, user="acme/alice")
    list(c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=16, stream=True, user="acme/bob"))
    c.responses.create(model=MODEL, input="[[tokens:5]] hi", safety_identifier="acme/carol", user="ignored")
    c.completions.create(model=MODEL, prompt="[[tokens:5]] hi", max_tokens=16, user="acme/dave")
    c.embeddings.create(model=EMBED, input="hello", user="acme/erin")
    claude(front_door, key).messages.create(
        model=MODEL, max_tokens=16, messages=MSGS, metadata={"user_id": "acme/frank"}
    )
    c.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=16, user="acme/alice", extra_headers={"X-Critique-End-User": "hdr/zed"}
    )
    c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=16)  # most requests name no one

    records = usage_records(stack, account)
    assert [(r["endpoint"], r["end_user"]) for r in records] == [
        ("chat.completions", "acme/alice"),
        ("chat.completions", "acme/alice"),
        ("chat.completions", "acme/bob"),
        ("responses", "acme/carol"),  # safety_identifier is preferred over user
        ("completions", "acme/dave"),
        ("embeddings", "acme/erin"),
        ("messages", "acme/frank"),
        ("chat.completions", "hdr/zed"),  # the header wins over the body
        ("chat.completions", ""),
    ]

    # The model server got the body's fields as sent, and never the header.
    seen = upstream_since(stack, before)
    assert len(seen) == len(records)
    assert all(
        not k.lower().startswith("x-critique-") or k.lower() == "x-critique-model" for s in seen for k in s["headers"]
    )
    assert [s["body"].get("user") for s in seen if s["path"] != "/v1/messages"] == [
        "acme/alice", "acme/alice", "acme/bob", "ignored", "acme/dave", "acme/erin", "acme/alice", None,
    ]  # fmt: skip
    [sent] = [s["body"] for s in seen if s["path"] == "/v1/messages"]
    assert sent["metadata"] == {"user_id": "acme/frank"}

    summary = dashboard(stack, key, days="7")
    credits: dict[str, int] = {}
    for r in records:
        if r["end_user"]:
            credits[r["end_user"]] = credits.get(r["end_user"], 0) + int(r["credits"])
    rows = {row["end_user"]: row for row in summary["by_end_user"]}
    assert set(rows) == set(credits) and summary["end_users_more"] is False
    assert rows["acme/alice"]["requests"] == 2 and rows["hdr/zed"]["requests"] == 1
    assert all(rows[u]["credits"] == f"{c // 1_000_000}.{c % 1_000_000:06d}" for u, c in credits.items())
    found = dashboard(stack, key, view="end_users", days="7", prefix="acme/")
    assert {row["end_user"] for row in found["data"]} == set(credits) - {"hdr/zed"}
    assert [row["end_user"] for row in dashboard(stack, key, view="end_users", prefix="hdr")["data"]] == ["hdr/zed"]


@pytest.mark.parametrize(
    ("fields", "header", "param"),
    [
        ({"user": "a\u0000b"}, None, "user"),
        ({"user": "x" * 10_240}, None, "user"),
        ({"user": {"id": "bob"}}, None, "user"),
        ({"user": 7}, None, "user"),
        ({"safety_identifier": "a\u202eb", "user": "ok"}, None, "safety_identifier"),
        ({}, "x" * 300, END_USER_HEADER),
        ({}, "caf\u00e9", END_USER_HEADER),
        ({"user": "ok"}, "", END_USER_HEADER),
    ],
)
def test_a_hostile_end_user_is_a_400_naming_it_before_any_hold(
    stack: Stack, front_door: FrontDoor, account: str, fields: dict[str, Any], header: str | None, param: str
) -> None:
    key = funded_key(stack, account)
    start = balance(stack, account)
    extra = {"X-Critique-End-User": header} if header is not None else None
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 16, **fields}
    headers: dict[str, Any] = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if header is not None:
        headers[END_USER_HEADER] = header.encode("utf-8")  # bytes: UTF-8 on the wire
    r = httpx.post(front_door.chat_url, json=body, headers=headers, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", param)
    assert usage_records(stack, account) == [] and balance(stack, account) == start
    if extra is None:  # the SDK's own way of sending it is refused the same
        with pytest.raises(openai.BadRequestError) as err:
            oa(front_door, key).chat.completions.create(
                model=MODEL,
                messages=MSGS,
                max_tokens=16,
                extra_body=fields,
            )
        assert err.value.param == param


def test_a_hostile_metadata_user_id_is_a_400_in_anthropics_shape(
    stack: Stack, front_door: FrontDoor, account: str
) -> None:
    key = funded_key(stack, account)
    with pytest.raises(anthropic.BadRequestError) as err:
        claude(front_door, key).messages.create(
            model=MODEL, max_tokens=16, messages=MSGS, metadata={"user_id": "line\nbreak"}
        )
    body: Any = err.value.body
    assert body["type"] == "error" and body["error"]["code"] == "invalid_request"
    assert "'metadata.user_id' must be" in body["error"]["message"]  # Anthropic's shape has no param
    assert usage_records(stack, account) == []
