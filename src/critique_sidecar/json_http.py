"""What the JSON routes share, the customer's (web/) and the operators' (provisioning/): request
bodies decoded with exact decimals, the request id, and JSON and error responses."""

from __future__ import annotations

import json
import re
import secrets
from decimal import Decimal
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from .core.errors import ApiError

MAX_BODY_BYTES = 16 * 1024
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def decode_body(raw: bytes, what: str = "", empty_ok: bool = True) -> Any:
    """JSON with exact decimals (a number like 0.1 is never a float); None for an empty body
    when `empty_ok`. NaN/Infinity, malformed text and bodies over MAX_BODY_BYTES are refused."""
    body = f"the {what} body" if what else "the body"
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError("request_too_large", f"{body} must be at most {MAX_BODY_BYTES} bytes")
    if empty_ok and not raw.strip():
        return None
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ApiError("invalid_request", f"{body} is not valid JSON") from None


def request_id_of(request: Request) -> str:
    """The caller's X-Request-Id when well formed, else a new one."""
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else "req_" + secrets.token_hex(12)


def json_response(
    data: BaseModel | dict[str, Any] | list[Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response that no cache keeps (settings, keys and balances change)."""
    body = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store", **(headers or {})},
    )


def error_response(error: ApiError) -> Response:
    """The one place a route's refusal becomes an HTTP response."""
    return Response(error.body(), status_code=error.status, media_type="application/json", headers=error.headers)


def http_error(exc: Exception) -> ApiError:
    """Starlette's own 404/405 (and other HTTP exceptions) in the product's error shape."""
    status = getattr(exc, "status_code", 500)
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
    return ApiError(code, getattr(exc, "detail", "") or code)
