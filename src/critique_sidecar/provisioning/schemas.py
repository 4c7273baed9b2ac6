"""Request and response bodies of the provisioning API (and of the customer's key routes).

Requests are validated here (unknown fields refused; credits exact, as in account_settings);
responses are built from these models, and the OpenAPI document is generated from them, so the
document cannot drift from what the code sends."""

from __future__ import annotations

from decimal import Decimal
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union, get_args, get_origin

from google.protobuf.descriptor import FieldDescriptor
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic.functional_validators import PlainValidator
from pydantic.json_schema import WithJsonSchema

from ..core.account_settings import AccountSettings, limit_type
from ..core.account_settings import _credits as settings_credits
from ..core.errors import ApiError
from ..core.key_controls import parse_time_ms
from ..core.limit_table import KEY_LIMITS, MAX_CREDITS, Limit
from ..core.scopes import DEFAULT_KEY_SCOPES, KNOWN_SCOPES
from ..core.usage_schema import SCHEMA as RECORD_SCHEMA

MAX_GRACE_S = 30 * 86400

CREDITS_SCHEMA = {
    "oneOf": [
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,6})?$"},
        {"type": "number", "minimum": 0, "maximum": int(MAX_CREDITS)},
    ],
    "description": "credits: a decimal string or JSON number, >= 0, at most 6 decimal places",
}
Credits = Annotated[Decimal, PlainValidator(settings_credits), WithJsonSchema(CREDITS_SCHEMA)]
CreditText = Annotated[str, Field(pattern=r"^-?[0-9]+\.[0-9]{6}$", description="credits, exact, 6 decimals")]
Name = Annotated[str, StringConstraints(max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- requests ------------------------------------------------------------------------------


def _key_limit_type(row: Limit) -> Any:
    return Credits if row.credits else limit_type(row)


class _ControlFields(_Strict):
    """Per-key controls: expiry, allowlist, and one field per key limit (core/limit_table.py);
    core/key_controls.py validates them again into KeyControls."""

    expires_at: str | None = Field(None, description="RFC 3339 time (or a date, midnight UTC) the key stops working")
    models: list[str] | None = Field(None, description="model allowlist; null: every model")

    def controls_given(self) -> dict[str, Any]:
        """The control fields the caller sent, as KeyControls.parse/patched take them."""
        return {name: getattr(self, name) for name in CONTROL_FIELDS if name in self.model_fields_set}


if TYPE_CHECKING:
    _Controls = _ControlFields
else:
    _Controls = create_model(
        "_Controls",
        __base__=_ControlFields,
        **{row.name: (_key_limit_type(row) | None, Field(None, description=row.help)) for row in KEY_LIMITS},
    )
CONTROL_FIELDS = ("expires_at", "models", *(row.name for row in KEY_LIMITS))


class KeyCreate(_Controls):
    name: Name = ""
    parent_key_id: str | None = Field(
        None, max_length=64, description="create the key as this key's child: no stronger than it, revoked with it"
    )
    scopes: list[str] = Field(default_factory=lambda: list(DEFAULT_KEY_SCOPES), min_length=1, max_length=10)

    @field_validator("scopes")
    @classmethod
    def _known(cls, scopes: list[str]) -> list[str]:
        unknown = [s for s in scopes if s not in KNOWN_SCOPES]
        if unknown:
            raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_SCOPES))}")
        return list(dict.fromkeys(scopes))


class KeyControlsPatch(_Controls):
    """Change some of a key's controls; null removes one."""


class KeyRotate(_Strict):
    grace_seconds: StrictInt | None = Field(
        None, ge=0, le=MAX_GRACE_S, description="how long the old secret keeps working; default from the server"
    )


GRANT_TERMS = ("category", "effective_at", "expires_at", "priority")


class CreditChange(_Strict):
    credits: Credits = Field(description="amount to grant or debit, > 0")
    note: Name | None = None
    # A grant's terms (docs/design.md, "Grants"); a debit takes none of them.
    category: Literal["paid", "promotional"] | None = Field(None, description="grants only; default paid")
    effective_at: str | None = Field(
        None, description="grants only: RFC 3339 UTC time the credits join the balance; default now"
    )
    expires_at: str | None = Field(
        None, description="grants only: RFC 3339 UTC time what is left expires; default never"
    )
    priority: Annotated[StrictInt, Field(ge=0, le=100)] | None = Field(
        None, description="grants only: 0-100, lower spends first; default 50"
    )

    @field_validator("credits")
    @classmethod
    def _positive(cls, value: Decimal) -> Decimal:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("effective_at", "expires_at")
    @classmethod
    def _time(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        ms = parse_time_ms(value)
        effective = info.data.get("effective_at")
        if info.field_name == "expires_at" and effective is not None and ms <= parse_time_ms(effective):
            raise ValueError("must be after effective_at")
        return value

    def terms_given(self) -> list[str]:
        return [name for name in GRANT_TERMS if getattr(self, name) is not None]


def parse(model: type[_Strict], data: Any, what: str) -> Any:
    """Validate a decoded body; problems are one invalid_request naming the first field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ApiError("invalid_request", f"the {what} body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        text = f"unknown field '{field}'" if err["type"] == "extra_forbidden" else f"'{field}': {err['msg']}"
        raise ApiError("invalid_request", f"Invalid {what}: {text}", param=field) from None


# -- responses -----------------------------------------------------------------------------


class _KeyViewFields(_Strict):
    key_id: str
    account: str
    name: str
    scopes: list[str]
    created_at: str
    revoked: bool
    parent_key_id: str | None = None
    expires_at: str | None = None
    models: list[str] | None = None


if TYPE_CHECKING:
    KeyView = _KeyViewFields
else:
    KeyView = create_model(
        "KeyView",
        __base__=_KeyViewFields,
        **{row.name: ((CreditText if row.credits else int) | None, None) for row in KEY_LIMITS},
    )


class KeyList(_Strict):
    data: list[KeyView]


class NewKey(KeyView):
    key: str = Field(description="the secret: shown once, never stored")


class RotatedKey(NewKey):
    previous_secret_retires_at: str


class CreditResult(_Strict):
    account: str
    action: str
    credits: CreditText
    balance_before: CreditText
    balance_after: CreditText
    idempotency_key: str
    applied_at: str
    audit_id: str
    grant_id: str | None = Field(None, description="the grant a grant created")


class Grant(_Strict):
    id: str
    category: str
    state: str = Field(
        description="waiting (not yet effective), active, expired (only what open requests hold is left)"
    )
    amount: CreditText
    remaining: CreditText
    held: CreditText
    priority: int
    effective_at: str | None
    expires_at: str | None


class GrantList(_Strict):
    account: str
    data: list[Grant] = Field(description="the live grants, in spend order")


class Hold(_Strict):
    request_id: str
    credits: CreditText
    expires_at: str


class Balance(_Strict):
    account: str
    balance: CreditText
    held: CreditText
    available: CreditText
    open_holds: int
    holds: list[Hold]


def _settings_fields() -> dict[str, tuple[Any, bool]]:
    """AccountSettings' fields as (JSON value type, nullable): the settings schemas follow the
    core model, so a new setting needs no change here."""
    out: dict[str, tuple[Any, bool]] = {}
    for name, info in AccountSettings.model_fields.items():
        base: Any = info.annotation
        if get_origin(base) in (Union, UnionType):  # `X | None`: the JSON type is X's (not a tuple's items)
            base = next(a for a in get_args(base) if a is not type(None))
        if get_origin(base) is Annotated:
            base = get_args(base)[0]
        if get_origin(base) is tuple:  # e.g. notify_thresholds_percent: a JSON array
            base = list[get_args(base)[0]]  # type: ignore[misc]
        out[name] = (base, info.default is None)
    return out


def _settings_model() -> type[_Strict]:
    fields: dict[str, Any] = {}
    for name, (base, nullable) in _settings_fields().items():
        kind = CreditText if base is Decimal else base
        fields[name] = (Optional[kind] if nullable else kind, ...)  # noqa: UP045 (a runtime type)
    return create_model("Settings", __base__=_Strict, **fields)


Settings = _settings_model()


def settings_patch_schema() -> dict[str, Any]:
    """JSON schema of a settings PATCH body (validated by core.account_settings.SettingsPatch)."""
    props: dict[str, Any] = {}
    for name, (base, nullable) in _settings_fields().items():
        if base is Decimal:
            schema: dict[str, Any] = CREDITS_SCHEMA
        elif base is bool:
            schema = {"type": "boolean"}
        else:
            schema = {"type": "integer", "minimum": 0}
        props[name] = {"anyOf": [schema, {"type": "null"}]} if nullable else schema
    return {"type": "object", "additionalProperties": False, "properties": props}


def _usage_record_model() -> type[_Strict]:
    """A usage record as `store.usage_records.record_json` writes it: the stream id and time, then
    every field of proto/usage_record.proto (so a field added there is documented here too)."""
    kinds = {FieldDescriptor.TYPE_BOOL: bool, FieldDescriptor.TYPE_STRING: str}
    fields: dict[str, Any] = {"id": (str, ...), "ts": (str, ...)}
    for name, kind in RECORD_SCHEMA:
        fields[name] = (CreditText if name == "credits" else kinds.get(kind, int), ...)
    return create_model("UsageRecord", __base__=_Strict, **fields)


UsageRecord = _usage_record_model()


class UsagePage(_Strict):
    data: list[UsageRecord]  # type: ignore[valid-type]
    next_cursor: str | None = Field(description="pass as `after` to continue; null when nothing was read")
    has_more: bool


class AuditActor(_Strict):
    type: str
    id: str
    name: str


class AuditEntry(_Strict):
    id: str
    ts: str
    actor: AuditActor
    action: str
    account: str | None
    target: str | None
    before: Any
    after: Any
    request_id: str
    idempotency_key: str | None


class AuditPage(_Strict):
    data: list[AuditEntry]
    next_cursor: str | None = Field(description="pass as `before` for older entries; null at the end")


class ErrorDetail(_Strict):
    message: str
    type: str
    code: str
    param: str | None


class Error(_Strict):
    error: ErrorDetail
