"""The product's error table (docs/design.md) as one exception type.

Every denial in the core raises `ApiError`; each front door turns it into a transport
response in exactly one place, using `status` and `body()` (OpenAI's error shape).
"""

from __future__ import annotations

import orjson

# code -> (HTTP status, OpenAI error "type")
ERROR_TABLE: dict[str, tuple[int, str]] = {
    "invalid_api_key": (401, "authentication_error"),
    "insufficient_scope": (403, "permission_error"),
    "inference_disabled": (403, "permission_error"),
    "insufficient_credits": (402, "insufficient_quota"),
    "daily_credit_cap_reached": (429, "rate_limit_error"),
    "monthly_credit_cap_reached": (429, "rate_limit_error"),
    "daily_request_cap_reached": (429, "rate_limit_error"),
    "invalid_request": (400, "invalid_request_error"),
    "model_not_found": (404, "invalid_request_error"),
    "not_found": (404, "invalid_request_error"),
    "method_not_allowed": (405, "invalid_request_error"),
    "request_too_large": (413, "invalid_request_error"),
    "upstream_error": (502, "api_error"),
    "upstream_auth_failed": (502, "api_error"),
    "response_too_large": (502, "api_error"),
    "upstream_timeout": (504, "api_error"),
    "service_unavailable": (503, "api_error"),
    # per-key controls and rate limits (core/limit_table.py)
    "model_not_allowed": (403, "permission_error"),
    "key_daily_credit_cap_reached": (429, "rate_limit_error"),
    "credits_per_minute_reached": (429, "rate_limit_error"),
    "credits_per_hour_reached": (429, "rate_limit_error"),
    "key_credits_per_minute_reached": (429, "rate_limit_error"),
    "key_credits_per_hour_reached": (429, "rate_limit_error"),
    "end_user_daily_credit_cap_reached": (429, "rate_limit_error"),
    "end_user_monthly_credit_cap_reached": (429, "rate_limit_error"),
    "rate_limit_exceeded": (429, "rate_limit_error"),
    # provisioning API (operator tokens, idempotent credit changes)
    "invalid_operator_token": (401, "authentication_error"),
    "idempotency_conflict": (409, "invalid_request_error"),
}


class ApiError(Exception):
    """A request the product refuses, with the code from the error table."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if code not in ERROR_TABLE:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.shape = "openai"  # the API's error shape: "openai" or "anthropic" (the endpoint's)

    @property
    def status(self) -> int:
        return ERROR_TABLE[self.code][0]

    @property
    def type(self) -> str:
        return ERROR_TABLE[self.code][1]

    def body(self) -> bytes:
        if self.shape == "anthropic":
            return anthropic_error_body(self.code, self.message)
        return error_body(self.code, self.message, self.param)


def error_body(code: str, message: str, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": ERROR_TABLE[code][1], "code": code, "param": param}})


# Anthropic's error types by status, as its SDKs map them to exception classes.
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_body(code: str, message: str) -> bytes:
    """Anthropic's error shape; the product's own code stays readable in `error.code`."""
    status = ERROR_TABLE[code][0]
    kind = ANTHROPIC_TYPES.get(status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message, "code": code}})


class StoreUnavailable(ApiError):
    """The store did not answer in time: fail closed with 503, never a free pass."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("service_unavailable", "The metering store is unavailable; retry shortly.")
        self.detail = detail
