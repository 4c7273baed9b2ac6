"""Per-key controls: expiry, model allowlist and the key limits (core/limit_table.py) of one API key.

Stored in the key's account slot (keyspace.key_controls) so the one admission script
(store/lua/place_hold.lua) enforces them atomically with the account's caps, floor and limits.
Every field is optional; `None` means "no such control".

Wire format (JSON, the same rules as the account settings):
- `expires_at`: an RFC 3339 / ISO 8601 time with a UTC offset (`2026-12-31T00:00:00Z`) or a
  date (`2026-12-31`, midnight UTC); `null` never expires. Stored as epoch milliseconds.
- `models`: a non-empty list of catalog model ids the key may use; `null` allows every model.
- each key limit of core/limit_table.py: credits as exact decimals (at most 6 places), the
  others as JSON integers in the row's bounds; key limits are always hard.
Unknown fields are refused; any problem is an `invalid_request` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from .account_settings import limit_from_json, limit_rule, limit_to_json, limit_type
from .errors import ApiError
from .limit_table import KEY_LIMITS, stored_value

MAX_MODELS = 64
MODEL_ID_RE = re.compile(r"[A-Za-z0-9._:/@+-]{1,128}")  # never ',' (the stored list's separator)
_LATEST_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
_LIMITS = {row.name: row for row in KEY_LIMITS}

# Redis hash fields (read by place_hold.lua) that are not limits. The model list is stored as
# ",a,b," so the script tests membership with one plain substring search.
H_EXPIRES = "expires_at_ms"
H_MODELS = "models"


class KeyControls:
    """One key's controls; construction validates (ValueError), `parse` validates JSON (ApiError).
    `limits` holds the key limits that are set (core/limit_table.py), credits as micro-credits;
    each is also an attribute (`controls.requests_per_minute`, None when not set)."""

    __slots__ = ("expires_at_ms", "limits", "models")

    def __init__(
        self, expires_at_ms: int | None = None, models: tuple[str, ...] | None = None, **limits: int | None
    ) -> None:
        if expires_at_ms is not None and (type(expires_at_ms) is not int or not 0 <= expires_at_ms <= _LATEST_MS):
            raise ValueError("expires_at_ms must be epoch milliseconds (0 .. year 9999), or None")
        if models is not None:
            if not isinstance(models, tuple) or not 1 <= len(models) <= MAX_MODELS:
                raise ValueError(f"models must be a tuple of 1 to {MAX_MODELS} model ids, or None")
            for model in models:
                if not isinstance(model, str) or not MODEL_ID_RE.fullmatch(model):
                    raise ValueError(f"invalid model id {str(model)[:140]!r}")
            if len(set(models)) != len(models):
                raise ValueError("models lists a model twice")
        for name, value in limits.items():
            row = _LIMITS.get(name)
            if row is None:
                raise ValueError(f"unknown key control {name!r}")
            if value is not None and (type(value) is not int or not row.least <= value <= row.stored_most):
                raise ValueError(f"{name} must be an integer from {row.least} to {row.stored_most}, or None")
        object.__setattr__(self, "expires_at_ms", expires_at_ms)
        object.__setattr__(self, "models", models)
        set_limits = {row.name: limits[row.name] for row in KEY_LIMITS if limits.get(row.name) is not None}
        object.__setattr__(self, "limits", set_limits)

    if TYPE_CHECKING:
        expires_at_ms: int | None
        models: tuple[str, ...] | None
        limits: dict[str, int]

    def __getattr__(self, name: str) -> int | None:
        if name in _LIMITS:
            return self.limits.get(name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("KeyControls is immutable")

    def _key(self) -> tuple[Any, ...]:
        return (self.expires_at_ms, self.models, tuple(sorted(self.limits.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyControls) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"KeyControls(expires_at_ms={self.expires_at_ms}, models={self.models}, limits={self.limits})"

    def changed(self, **changes: Any) -> KeyControls:
        """These controls with some fields replaced (None removes a control)."""
        fields: dict[str, Any] = {"expires_at_ms": self.expires_at_ms, "models": self.models, **self.limits}
        return KeyControls(**{**fields, **changes})

    @property
    def empty(self) -> bool:
        return self.expires_at_ms is None and self.models is None and not self.limits

    def expired(self, now_ms: int) -> bool:
        return self.expires_at_ms is not None and now_ms >= self.expires_at_ms

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
            else:
                changes[name] = limit_from_json(_LIMITS[name], value)
        models = changes.get("models")
        if known_models is not None and models:
            unknown = [m for m in models if m not in known_models]
            if unknown:
                raise ApiError(
                    "invalid_request",
                    f"Invalid key controls: 'models' lists unknown model(s): {', '.join(unknown)}",
                    param="models",
                )
        return self.changed(**changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "expires_at": None if self.expires_at_ms is None else iso_ms(self.expires_at_ms),
            "models": None if self.models is None else list(self.models),
            **{row.name: limit_to_json(row, self.limits.get(row.name)) for row in KEY_LIMITS},
        }

    # --- the stored hash --------------------------------------------------------------------
    def to_hash(self) -> dict[str, str]:
        """The fields to store (absent fields mean no control)."""
        out: dict[str, str] = {}
        if self.expires_at_ms is not None:
            out[H_EXPIRES] = str(self.expires_at_ms)
        if self.models is not None:
            out[H_MODELS] = "," + ",".join(self.models) + ","
        for row in KEY_LIMITS:
            if row.name in self.limits:
                out[row.field] = str(self.limits[row.name])
        return out

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> KeyControls:
        """Read the stored hash as place_hold.lua does: a field counts only when it is valid."""
        raw_expiry = data.get(H_EXPIRES)
        expires = int(raw_expiry) if raw_expiry and raw_expiry.isascii() and raw_expiry.isdigit() else None
        listed = dict.fromkeys(m for m in data.get(H_MODELS, "").split(",") if MODEL_ID_RE.fullmatch(m))
        return cls(
            expires_at_ms=expires if expires is not None and expires <= _LATEST_MS else None,
            models=tuple(listed)[:MAX_MODELS] or None,
            **{row.name: stored_value(row, data.get(row.field)) for row in KEY_LIMITS},
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
    text = value
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
    if not isinstance(value, str) or not MODEL_ID_RE.fullmatch(value):
        raise PydanticCustomError("model_id", "must list model ids (1-128 of A-Z a-z 0-9 . _ : / @ + -)")
    return value


def _model_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MODELS:
        raise PydanticCustomError("model_list", f"must be a list of 1 to {MAX_MODELS} model ids, or null")
    models = [_model_id(v) for v in value]
    if len(set(models)) != len(models):
        raise PydanticCustomError("model_list", "lists a model twice")
    return models


class _Controls(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    expires_at: Annotated[int, PlainValidator(parse_time_ms)] | None = None
    models: Annotated[list[str], PlainValidator(_model_list)] | None = None


_LIMIT_FIELDS: dict[str, Any] = {row.name: (limit_type(row) | None, None) for row in KEY_LIMITS}
_ControlsIn: type[_Controls] = create_model("KeyControlsIn", __base__=_Controls, **_LIMIT_FIELDS)
FIELDS = tuple(_ControlsIn.model_fields)


def _as_api_error(exc: ValidationError) -> ApiError:
    problems = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            problems.append((name, f"unknown field '{name}'; known fields: {', '.join(FIELDS)}"))
        elif name in _LIMITS and err["type"] in ("int_type", "greater_than_equal", "less_than_equal"):
            problems.append((name, f"'{name}' {limit_rule(_LIMITS[name])}"))
        else:
            problems.append((name, f"'{name}' {err['msg']}"))
    return ApiError(
        "invalid_request", "Invalid key controls: " + "; ".join(p[1] for p in problems), param=problems[0][0]
    )
