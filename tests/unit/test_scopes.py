"""scopes.py: which scopes each route needs; scope parsing."""

from __future__ import annotations

import pytest

from critique_sidecar.core.endpoints import required_scopes
from critique_sidecar.core.scopes import (
    ADMIN_INFERENCE,
    DEFAULT_KEY_SCOPES,
    KNOWN_SCOPES,
    READ_BUILDER,
    READ_INFERENCE,
    WRITE_BUILDER,
    WRITE_INFERENCE,
    parse_scopes,
)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/api/v1/chat/completions", {"write:inference", "write:builder"}),
        ("GET", "/api/v1/models", {"read:inference", "read:builder"}),
        ("GET", "/api/settings/inference-api", {"read:inference", "admin:inference"}),
        ("PATCH", "/api/settings/inference-api", {"admin:inference"}),
        ("GET", "/api/dashboard/inference-api", {"read:inference", "admin:inference"}),
    ],
)
def test_the_five_routes(method: str, path: str, expected: set[str]) -> None:
    assert required_scopes(method, path) == frozenset(expected)
    # method case, trailing slash and query string do not change the answer
    assert required_scopes(method.lower(), path) == frozenset(expected)
    assert required_scopes(method.title(), path + "/") == frozenset(expected)
    assert required_scopes(method, path + "?days=30&view=activity") == frozenset(expected)
    assert required_scopes(method, path + "/?x=1") == frozenset(expected)


def test_inference_key_cannot_change_settings() -> None:
    need = required_scopes("PATCH", "/api/settings/inference-api")
    assert need is not None
    assert need.isdisjoint(DEFAULT_KEY_SCOPES)
    assert need.isdisjoint({READ_BUILDER, WRITE_BUILDER, READ_INFERENCE, WRITE_INFERENCE})


def test_default_key_scopes_cover_chat_and_models() -> None:
    for method, path in (("POST", "/api/v1/chat/completions"), ("GET", "/api/v1/models")):
        need = required_scopes(method, path)
        assert need is not None and not need.isdisjoint(DEFAULT_KEY_SCOPES)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/chat/completions"),  # wrong method
        ("DELETE", "/api/settings/inference-api"),
        ("POST", "/api/v1/models"),
        ("GET", "/api/v1/chat/completions/extra"),
        ("GET", "/API/V1/MODELS"),  # paths are case-sensitive
        ("GET", "/"),
        ("GET", ""),
        ("GET", "/api/v1/modelsx"),
        ("POST", "/api/v1/coding-agent/runs"),
    ],
)
def test_unguarded_routes(method: str, path: str) -> None:
    assert required_scopes(method, path) is None


def test_parse_scopes() -> None:
    assert parse_scopes("read:inference,write:inference") == ("read:inference", "write:inference")
    assert parse_scopes(" write:builder , admin:inference ,") == ("write:builder", "admin:inference")
    assert set(parse_scopes(",".join(sorted(KNOWN_SCOPES)))) == KNOWN_SCOPES
    assert ADMIN_INFERENCE in KNOWN_SCOPES


def test_parse_scopes_unknown_scope() -> None:
    with pytest.raises(ValueError) as err:
        parse_scopes("read:inference,write:everything,admin")
    message = str(err.value)
    assert "unknown scope" in message
    assert "write:everything" in message and "admin" in message
    assert "read:inference" in message  # the known scopes are listed to help


@pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
def test_parse_scopes_needs_one(text: str) -> None:
    with pytest.raises(ValueError, match="at least one scope"):
        parse_scopes(text)
