"""The end user a request is made for: products built on the API serve their own users through
one key, and name the user so usage can be attributed to them (records, the dashboard).

Where it comes from, the first that is present:
  1. the request header X-Critique-End-User (core/wire.py END_USER_HEADER);
  2. the body: `safety_identifier`, else `user` on the OpenAI endpoints; `metadata.user_id` on
     Anthropic Messages (each endpoint's parse reads its own fields with `from_body`).

The id is hostile input (it lands in records, Redis keys' members and the dashboard), so it is
a string of 1 to 256 characters, every one printable (str.isprintable: no control, format,
line or paragraph separator characters), not starting or ending with whitespace. In the
header it must be ASCII besides (header bytes decode differently at the two front doors).
Anything else is a 400 naming the field. The body's fields go to the model server unchanged;
the header never does."""

from __future__ import annotations

import re
from typing import Any

from .errors import ApiError

MAX_LEN = 256
# Visible first and last characters, anything between: isprintable() does the rest.
_SHAPE = re.compile(rf"\S(?:.{{0,{MAX_LEN - 2}}}\S)?", re.S)
_ASCII_SHAPE = re.compile(rf"[\x21-\x7e](?:[\x20-\x7e]{{0,{MAX_LEN - 2}}}[\x21-\x7e])?")

RULE = f"a string of 1 to {MAX_LEN} printable characters, not starting or ending with whitespace"


def valid(value: object) -> bool:
    return isinstance(value, str) and _SHAPE.fullmatch(value) is not None and value.isprintable()


def valid_header(value: str) -> bool:
    return _ASCII_SHAPE.fullmatch(value) is not None


def _refuse(param: str, rule: str = RULE) -> ApiError:
    return ApiError("invalid_request", f"'{param}' must be {rule}", param=param)


def checked(value: Any, param: str) -> str:
    """`value` as an end-user id, or a 400 naming `param`."""
    if not valid(value):
        raise _refuse(param)
    assert isinstance(value, str)
    return value


def from_header(value: str, param: str) -> str:
    if not valid_header(value):
        raise _refuse(param, f"{RULE}, in ASCII")
    return value


def from_body(body: dict[str, Any], *names: str) -> str:
    """The end user named by the first of the top-level `names` the body sets (a null is unset);
    each one set is checked, so a bad field is a 400 even beside a good one."""
    found = ""
    for name in names:
        value = body.get(name)
        if value is not None:
            value = checked(value, name)
            found = found or value
    return found


def from_metadata(body: dict[str, Any]) -> str:
    """Anthropic Messages' `metadata.user_id` ("" when absent)."""
    metadata = body.get("metadata")
    if metadata is None:
        return ""
    if not isinstance(metadata, dict):
        raise ApiError("invalid_request", "'metadata' must be an object", param="metadata")
    value = metadata.get("user_id")
    return "" if value is None else checked(value, "metadata.user_id")
