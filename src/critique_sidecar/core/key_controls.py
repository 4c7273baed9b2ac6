"""Per-key controls: expiry, model allowlist, daily credit cap and rate limits of one API key.

Stored in the key's account slot (keyspace.key_controls) so the one admission script
(store/lua/place_hold.lua) enforces them atomically with the account's caps, floor and limits.
Every field is optional; `None` means "no such control".

Wire format (JSON, the same rules as the account settings):
- `expires_at`: an RFC 3339 / ISO 8601 time with a UTC offset (`2026-12-31T00:00:00Z`) or a
  date (`2026-12-31`, midnight UTC); `null` never expires. Stored as epoch milliseconds.
- `models`: a non-empty list of catalog model ids the key may use; `null` allows every model.
- `daily_credit_cap`: credits per UTC day for this key (exact decimal, at most 6 places),
  always hard (independent of the account's `block_when_cap_reached`).
- `requests_per_minute`, `tokens_per_minute`, `max_concurrent`: JSON integers >= 1.
Unknown fields are refused; any problem is an `invalid_request` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from .account_settings import MAX_CREDITS, Credits
from .errors import ApiError
from .money import MICRO, format_credits

MAX_MODELS = 64
MODEL_ID_RE = re.compile(r"^[A-Za-z0-9._:/@+-]{1,128}$")  # never ',' (the stored list's separator)
# Lua numbers are doubles: tokens_per_minute * 60000 stays far below 2**53.
MAX_REQUESTS_PER_MINUTE = 1_000_000
MAX_TOKENS_PER_MINUTE = 1_000_000_000
MAX_CONCURRENT = 100_000
MAX_CREDITS_MICRO = int(MAX_CREDITS * MICRO)
_LATEST_MS = 253402300799999  # 9999-12-31T23:59:59.999Z

# Redis hash fields (read by place_hold.lua). The model list is stored as ",a,b," so the
# script tests membership with one plain substring search.
H_EXPIRES = "expires_at_ms"
H_MODELS = "models"
H_DAILY_CREDIT_CAP = "daily_credit_cap"
H_RPM = "rpm"
H_TPM = "tpm"
H_CONCURRENT = "max_concurrent"


def _positive(name: str, value: int | None, most: int) -> None:
    if value is not None and (type(value) is not int or not 1 <= value <= most):
        raise ValueError(f"{name} must be an integer from 1 to {most}, or None")


@dataclass(frozen=True, slots=True)
class KeyControls:
    """One key's controls; construction validates (ValueError), `parse` validates JSON (ApiError)."""

    expires_at_ms: int | None = None
    models: tuple[str, ...] | None = None
    daily_credit_cap: int | None = None  # micro-credits
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        if self.expires_at_ms is not None and (
            type(self.expires_at_ms) is not int or not 0 <= self.expires_at_ms <= _LATEST_MS
        ):
            raise ValueError("expires_at_ms must be epoch milliseconds (0 .. year 9999), or None")
        if self.models is not None:
            if not isinstance(self.models, tuple) or not 1 <= len(self.models) <= MAX_MODELS:
                raise ValueError(f"models must be a tuple of 1 to {MAX_MODELS} model ids, or None")
            for model in self.models:
                if not isinstance(model, str) or not MODEL_ID_RE.match(model):
                    raise ValueError(f"invalid model id {str(model)[:140]!r}")
            if len(set(self.models)) != len(self.models):
                raise ValueError("models lists a model twice")
        cap = self.daily_credit_cap
        if cap is not None and (type(cap) is not int or not 0 <= cap <= MAX_CREDITS_MICRO):
            raise ValueError("daily_credit_cap must be micro-credits >= 0 and <= the credit maximum, or None")
        _positive("requests_per_minute", self.requests_per_minute, MAX_REQUESTS_PER_MINUTE)
        _positive("tokens_per_minute", self.tokens_per_minute, MAX_TOKENS_PER_MINUTE)
        _positive("max_concurrent", self.max_concurrent, MAX_CONCURRENT)

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms

    def allows_model(self, model_id: str) -> bool:
        return self.models is None or model_id in self.models

    # --- JSON (the API and `keys ... --json`) -----------------------------------------------
    @classmethod
    def parse(cls, data: Any, known_models: Collection[str] | None = None) -> KeyControls:
        """Validate a decoded JSON object holding some or all fields (absent = None)."""
        return cls().patched(data, known_models)

    def patched(self, data: Any, known_models: Collection[str] | None = None) -> KeyControls:
        """These controls with the fields present in `data` changed (`null` clears one)."""
        if not isinstance(data, dict):
            raise ApiError("invalid_request", "the key controls must be a JSON object")
        try:
            given = _ControlsIn.model_validate(data)
        except ValidationError as exc:
            raise _as_api_error(exc) from None
        changes: dict[str, Any] = {}
        for name in given.model_fields_set:
            value = getattr(given, name)
            if name == "expires_at":
                changes["expires_at_ms"] = value
            elif name == "models":
                changes["models"] = None if value is None else tuple(value)
            elif name == "daily_credit_cap":
                changes["daily_credit_cap"] = None if value is None else int(value * MICRO)
            else:
                changes[name] = value
        models = changes.get("models")
        if known_models is not None and models:
            unknown = [m for m in models if m not in known_models]
            if unknown:
                raise ApiError(
                    "invalid_request",
                    f"Invalid key controls: 'models' lists unknown model(s): {', '.join(unknown)}",
                    param="models",
                )
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "expires_at": None if self.expires_at_ms is None else iso_ms(self.expires_at_ms),
            "models": None if self.models is None else list(self.models),
            "daily_credit_cap": None if self.daily_credit_cap is None else format_credits(self.daily_credit_cap),
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "max_concurrent": self.max_concurrent,
        }

    # --- the stored hash --------------------------------------------------------------------
    def to_hash(self) -> dict[str, str]:
        """The fields to store (absent fields mean no control)."""
        out: dict[str, str] = {}
        if self.expires_at_ms is not None:
            out[H_EXPIRES] = str(self.expires_at_ms)
        if self.models is not None:
            out[H_MODELS] = "," + ",".join(self.models) + ","
        for name, value in (
            (H_DAILY_CREDIT_CAP, self.daily_credit_cap),
            (H_RPM, self.requests_per_minute),
            (H_TPM, self.tokens_per_minute),
            (H_CONCURRENT, self.max_concurrent),
        ):
            if value is not None:
                out[name] = str(value)
        return out

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> KeyControls:
        """Read the stored hash as place_hold.lua does: a field counts only when it is valid."""

        def number(name: str, low: int, high: int) -> int | None:
            raw = data.get(name)
            return int(raw) if raw is not None and raw.isdigit() and low <= int(raw) <= high else None

        listed = dict.fromkeys(m for m in data.get(H_MODELS, "").split(",") if MODEL_ID_RE.match(m))
        return cls(
            expires_at_ms=number(H_EXPIRES, 0, _LATEST_MS),
            models=tuple(listed)[:MAX_MODELS] or None,
            daily_credit_cap=number(H_DAILY_CREDIT_CAP, 0, MAX_CREDITS_MICRO),
            requests_per_minute=number(H_RPM, 1, MAX_REQUESTS_PER_MINUTE),
            tokens_per_minute=number(H_TPM, 1, MAX_TOKENS_PER_MINUTE),
            max_concurrent=number(H_CONCURRENT, 1, MAX_CONCURRENT),
        )


def iso_ms(ms: int) -> str:
    """Epoch ms as an RFC 3339 UTC time: 2026-12-31T00:00:00Z (milliseconds only when set)."""
    at = datetime.fromtimestamp(ms / 1000, UTC)
    text = at.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")


def parse_time_ms(value: Any) -> int:
    """An RFC 3339 time with an offset, or a date (midnight UTC), as epoch milliseconds."""
    if not isinstance(value, str) or len(value) > 40:
        raise PydanticCustomError("time_type", "must be a time like 2026-12-31T00:00:00Z or a date like 2026-12-31")
    text = value.strip()
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            at = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        else:
            at = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise PydanticCustomError(
            "time_type", "must be a time like 2026-12-31T00:00:00Z or a date like 2026-12-31"
        ) from None
    if at.tzinfo is None:
        raise PydanticCustomError("time_zone", "needs a UTC offset (Z or +hh:mm), e.g. 2026-12-31T00:00:00Z")
    ms = int(at.timestamp() * 1000)
    if not 0 <= ms <= _LATEST_MS:
        raise PydanticCustomError("time_type", "is out of range")
    return ms


def _model_id(value: Any) -> str:
    if not isinstance(value, str) or not MODEL_ID_RE.match(value):
        raise PydanticCustomError("model_id", "must list model ids (1-128 of A-Z a-z 0-9 . _ : / @ + -)")
    return value


def _model_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MODELS:
        raise PydanticCustomError("model_list", f"must be a list of 1 to {MAX_MODELS} model ids, or null")
    models = [_model_id(v) for v in value]
    if len(set(models)) != len(models):
        raise PydanticCustomError("model_list", "lists a model twice")
    return models


class _ControlsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    expires_at: Annotated[int, PlainValidator(parse_time_ms)] | None = None
    models: Annotated[list[str], PlainValidator(_model_list)] | None = None
    daily_credit_cap: Credits | None = None
    requests_per_minute: Annotated[StrictInt, Field(ge=1, le=MAX_REQUESTS_PER_MINUTE)] | None = None
    tokens_per_minute: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS_PER_MINUTE)] | None = None
    max_concurrent: Annotated[StrictInt, Field(ge=1, le=MAX_CONCURRENT)] | None = None


FIELDS = tuple(_ControlsIn.model_fields)


def _as_api_error(exc: ValidationError) -> ApiError:
    problems = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            problems.append((name, f"unknown field '{name}'; known fields: {', '.join(FIELDS)}"))
        elif err["type"] in ("int_type", "greater_than_equal", "less_than_equal"):
            most = {"requests_per_minute": MAX_REQUESTS_PER_MINUTE, "tokens_per_minute": MAX_TOKENS_PER_MINUTE}
            problems.append((name, f"'{name}' must be an integer from 1 to {most.get(str(name), MAX_CONCURRENT)}"))
        else:
            problems.append((name, f"'{name}' {err['msg']}"))
    return ApiError(
        "invalid_request", "Invalid key controls: " + "; ".join(p[1] for p in problems), param=problems[0][0]
    )
