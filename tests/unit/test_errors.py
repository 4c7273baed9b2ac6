"""errors.py: the error table and OpenAI's error shape."""

from __future__ import annotations

import orjson
import pytest

from critique_sidecar.core.errors import ERROR_TABLE, ApiError, StoreUnavailable, error_body

# docs/design.md's error table (status per code)
DESIGN_TABLE = {
    "invalid_api_key": 401,
    "insufficient_scope": 403,
    "inference_disabled": 403,
    "insufficient_credits": 402,
    "daily_credit_cap_reached": 429,
    "monthly_credit_cap_reached": 429,
    "daily_request_cap_reached": 429,
    "invalid_request": 400,
    "model_not_found": 404,
    "request_too_large": 413,
    "service_unavailable": 503,
}


@pytest.mark.parametrize(("code", "status"), sorted(DESIGN_TABLE.items()))
def test_design_table_statuses(code: str, status: int) -> None:
    assert ERROR_TABLE[code][0] == status
    assert ApiError(code, "m").status == status


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_every_code_has_openai_shape(code: str) -> None:
    status, type_ = ERROR_TABLE[code]
    assert 400 <= status <= 599
    err = ApiError(code, f"message for {code}", param="messages")
    payload = orjson.loads(err.body())
    assert list(payload) == ["error"]
    assert payload["error"] == {"message": f"message for {code}", "type": type_, "code": code, "param": "messages"}
    assert err.status == status and err.type == type_
    assert str(err) == f"message for {code}"


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_param_defaults_to_null(code: str) -> None:
    payload = orjson.loads(error_body(code, "x"))
    assert set(payload["error"]) == {"message", "type", "code", "param"}
    assert payload["error"]["param"] is None


def test_openai_types() -> None:
    assert ApiError("invalid_api_key", "m").type == "authentication_error"
    assert ApiError("insufficient_scope", "m").type == "permission_error"
    assert ApiError("insufficient_credits", "m").type == "insufficient_quota"
    assert ApiError("daily_request_cap_reached", "m").type == "rate_limit_error"
    assert ApiError("invalid_request", "m").type == "invalid_request_error"
    assert ApiError("service_unavailable", "m").type == "api_error"


def test_unknown_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown error code"):
        ApiError("teapot", "m")


def test_headers_default_empty_and_kept() -> None:
    assert ApiError("invalid_request", "m").headers == {}
    assert ApiError("daily_credit_cap_reached", "m", headers={"retry-after": "60"}).headers == {"retry-after": "60"}


def test_message_is_json_escaped() -> None:
    msg = 'quote " backslash \\ newline \n unicode é </script>'
    payload = orjson.loads(ApiError("invalid_request", msg).body())
    assert payload["error"]["message"] == msg


def test_store_unavailable() -> None:
    err = StoreUnavailable("redis timeout")
    assert isinstance(err, ApiError)
    assert (err.code, err.status) == ("service_unavailable", 503)
    assert err.detail == "redis timeout"
    assert "redis timeout" not in err.body().decode()  # internal detail stays internal
