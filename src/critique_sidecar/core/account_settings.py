"""An account's Inference API settings (the product page's "Settings -> Connections" panel).

`AccountSettings` is the full, current state; `SettingsPatch` is a partial update (PATCH body
or CLI options). Both are validated here, once, and converted to and from the Redis hash
fields `store/lua/place_hold.lua` enforces.

Wire format (JSON):
- Credit amounts (`monthly_credit_cap`, `daily_credit_cap`, `reserve_credits_for_review`) are
  exact decimals, >= 0 with at most 6 decimal places (whole micro-credits), at most
  `MAX_CREDITS`. They may be sent as JSON numbers (`12.5`) or decimal strings (`"12.5"`):
  responses carry them as fixed 6-decimal strings, so what GET returns PATCHes back unchanged.
- Limits (core/limit_table.py): credits as above, counts as JSON integers (not `"12"`, not
  `12.0`) in the row's bounds.
- The switches are JSON booleans (not `"true"`, not `1`).
- `null` clears a cap (no limit); the switches and the floor cannot be null (a floor of 0 is
  "no floor"). A cap of 0 blocks all inference spend (hard mode) or warns on every request.
- Unknown fields are refused, so a typo never silently does nothing.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from .audit import Change
from .errors import ApiError
from .limit_table import ACCOUNT_LIMITS, MAX_CREDITS, Limit, stored_value
from .money import MICRO, format_credits
from .webhook_address import ALLOW_SETTING, Network, host_refusal, split_host_port

_ONE_MICRO = Decimal(1).scaleb(-6)
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_CREDITS_RULE = f"a number of credits >= 0 and <= {MAX_CREDITS} with at most 6 decimal places"


def _credits(value: Any) -> Decimal:
    """Exact credits from a JSON number (int, or Decimal when parsed with parse_float=Decimal)
    or a plain decimal string. Floats are refused: they are not exact."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise PydanticCustomError("credits_type", f"must be {_CREDITS_RULE}")
    if isinstance(value, str):
        if not _DECIMAL_TEXT.fullmatch(value):
            raise PydanticCustomError("credits_type", f"must be {_CREDITS_RULE}; got a non-numeric string")
        value = Decimal(value)
    amount = Decimal(value)
    if not amount.is_finite():
        problem = "is not a finite number"
    elif amount < 0:
        problem = "is negative"
    elif amount > MAX_CREDITS:
        problem = "is too large"
    elif amount != amount.quantize(_ONE_MICRO):  # exact: arithmetic would round 1e-999999999 to 0
        problem = "has more than 6 decimal places"
    else:
        return amount
    raise PydanticCustomError(
        "credits_value", f"must be {_CREDITS_RULE}; {{value}} {problem}", {"value": str(value)[:40]}
    )


Credits = Annotated[Decimal, PlainValidator(_credits)]


def limit_type(row: Limit) -> Any:
    """The JSON type of one limit's value (core/limit_table.py): exact credits or a bounded integer."""
    if row.credits:
        return Credits
    return Annotated[StrictInt, Field(ge=row.least, le=row.most)]


def limit_from_json(row: Limit, value: Decimal | int | None) -> int | None:
    """A validated JSON value as stored (credits as micro-credits)."""
    if value is None:
        return None
    return int(value * MICRO) if row.credits else int(value)


def limit_to_json(row: Limit, stored: int | None) -> str | int | None:
    """A stored value as the API shows it (credits as exact 6-decimal strings)."""
    if stored is None:
        return None
    return format_credits(stored) if row.credits else stored


def limit_rule(row: Limit) -> str:
    if row.least == 0:
        return f"must be an integer >= 0 and <= {row.most}"
    return f"must be an integer from {row.least} to {row.most}, or null"


# Redis hash fields of the settings that are not limits (limits: core/limit_table.py).
H_ENABLED = "enabled"
H_RESERVE_FLOOR = "reserve_floor"
H_BLOCK = "block_when_cap_reached"
H_OPT_IN = "training_opt_in"
# Budget notifications (read by settle.lua's notification step).
H_NOTIFY_URL = "notify_url"
H_NOTIFY_THRESHOLDS = "notify_thresholds"  # "50,80,100": percent of each cap
H_NOTIFY_LOW_BALANCE = "notify_low_balance"  # micro-credits
H_NOTIFY_SECRET = "notify_secret"  # the webhook signing secret: never in the API's settings JSON
MAX_THRESHOLDS = 10
MAX_URL_CHARS = 2048
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?(/[!-~]*)?")


def _webhook_url(value: Any, info: ValidationInfo) -> str:
    """An absolute http(s) URL: printable ASCII, no credentials, no fragment, bounded length,
    and no literal private address or localhost unless the validation context's
    `webhook_networks` allow it (delivery checks every resolved address again:
    core/webhook_address.py). Delivery refuses http:// unless CRITIQUE_NOTIFY_ALLOW_HTTP."""
    if not isinstance(value, str):
        raise PydanticCustomError("url_type", "must be an http(s) URL string")
    rule = f"must be an absolute http:// or https:// URL of at most {MAX_URL_CHARS} characters, without credentials or fragment"
    if len(value) > MAX_URL_CHARS or not _URL.fullmatch(value) or "@" in value.split("/", 3)[2] or "#" in value:
        raise PydanticCustomError("url_value", rule)
    allowed: tuple[Network, ...] = (info.context or {}).get("webhook_networks", ())
    reason = host_refusal(split_host_port(value), allowed)
    if reason is not None:
        raise PydanticCustomError(
            "url_address",
            "must point at a public address: {reason}; an operator can allow networks with {setting}",
            {"reason": reason, "setting": ALLOW_SETTING},
        )
    return value


def _thresholds(value: Any) -> tuple[int, ...]:
    """Percentages of a cap: a JSON list of distinct integers 1..100 (at most 10), kept sorted."""
    rule = f"must be a list of at most {MAX_THRESHOLDS} distinct integers from 1 to 100 (percent of each cap)"
    if not isinstance(value, (list, tuple)) or len(value) > MAX_THRESHOLDS:
        raise PydanticCustomError("thresholds", rule)
    if any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100 for v in value):
        raise PydanticCustomError("thresholds", rule)
    if len(set(value)) != len(value):
        raise PydanticCustomError("thresholds", rule + "; got duplicates")
    return tuple(sorted(value))


WebhookUrl = Annotated[str, PlainValidator(_webhook_url)]
Thresholds = Annotated[tuple[int, ...], PlainValidator(_thresholds)]


def _thresholds_from_hash(raw: str | None) -> tuple[int, ...]:
    if not raw:
        return ()
    return tuple(int(p) for p in raw.split(",") if p.isascii() and p.isdigit())


# API field -> hash field
HASH_FIELDS = {
    "enabled": H_ENABLED,
    "reserve_credits_for_review": H_RESERVE_FLOOR,
    "block_when_cap_reached": H_BLOCK,
    "deepseek_training_opt_in": H_OPT_IN,
    **{row.name: row.field for row in ACCOUNT_LIMITS},
    "notify_webhook_url": H_NOTIFY_URL,
    "notify_thresholds_percent": H_NOTIFY_THRESHOLDS,
    "notify_low_balance_credits": H_NOTIFY_LOW_BALANCE,
}
_LIMITS = {row.name: row for row in ACCOUNT_LIMITS}


def _micro(amount: Decimal) -> int:
    return int(amount * MICRO)


def _credits_or_none(raw: str | None) -> Decimal | None:
    if raw is None or not raw.isascii() or not raw.isdigit():
        return None  # the scripts would not count it either
    return Decimal(int(raw)) / MICRO


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    if TYPE_CHECKING:  # the limit fields come from core/limit_table.py

        def __getattr__(self, name: str) -> Any: ...


class _AccountSettings(_Settings):
    """The settings that are not limits; AccountSettings adds one field per account limit, so
    its defaults are an account nobody configured."""

    enabled: StrictBool = True
    reserve_credits_for_review: Credits = Decimal(0)
    block_when_cap_reached: StrictBool = True
    deepseek_training_opt_in: StrictBool = False
    notify_webhook_url: WebhookUrl | None = None
    notify_thresholds_percent: Thresholds = ()
    notify_low_balance_credits: Credits | None = None

    def limit(self, name: str) -> int | None:
        """An account limit as stored (credits in micro-credits), None when not set."""
        value: Decimal | int | None = getattr(self, name)
        return limit_from_json(_LIMITS[name], value)

    def to_json(self) -> dict[str, Any]:
        """The API representation: credit amounts as exact 6-decimal strings."""

        def credits(v: Decimal | None) -> str | None:
            return None if v is None else format_credits(_micro(v))

        return {
            "enabled": self.enabled,
            **{row.name: limit_to_json(row, self.limit(row.name)) for row in ACCOUNT_LIMITS},
            "reserve_credits_for_review": credits(self.reserve_credits_for_review),
            "block_when_cap_reached": self.block_when_cap_reached,
            "deepseek_training_opt_in": self.deepseek_training_opt_in,
            "notify_webhook_url": self.notify_webhook_url,
            "notify_thresholds_percent": list(self.notify_thresholds_percent),
            "notify_low_balance_credits": credits(self.notify_low_balance_credits),
        }

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> AccountSettings:
        """Read the stored hash with the admission script's semantics, so what is shown is what is
        enforced: enabled and blocking unless '0', opt-in only when '1', a limit only when valid."""
        limits: dict[str, Any] = {}
        for row in ACCOUNT_LIMITS:
            stored = stored_value(row, data.get(row.field))
            limits[row.name] = None if stored is None else Decimal(stored) / MICRO if row.credits else stored
        return AccountSettings.model_construct(
            enabled=data.get(H_ENABLED) != "0",
            reserve_credits_for_review=_credits_or_none(data.get(H_RESERVE_FLOOR)) or Decimal(0),
            block_when_cap_reached=data.get(H_BLOCK) != "0",
            deepseek_training_opt_in=data.get(H_OPT_IN) == "1",
            notify_webhook_url=data.get(H_NOTIFY_URL) or None,
            notify_thresholds_percent=_thresholds_from_hash(data.get(H_NOTIFY_THRESHOLDS)),
            notify_low_balance_credits=_credits_or_none(data.get(H_NOTIFY_LOW_BALANCE)),
            **limits,
        )


def _with_limits(name: str, base: type[_Settings]) -> Any:
    """`base` with one optional field per account limit (core/limit_table.py)."""
    fields: dict[str, Any] = {row.name: (limit_type(row) | None, None) for row in ACCOUNT_LIMITS}
    return create_model(name, __base__=base, **fields)


if TYPE_CHECKING:
    AccountSettings = _AccountSettings
else:
    AccountSettings = _with_limits("AccountSettings", _AccountSettings)
    """The full settings of one account; the defaults are an account nobody configured."""


class _SettingsPatch(_Settings):
    """A partial update: only the fields present change; `null` clears a cap."""

    enabled: StrictBool | None = None
    reserve_credits_for_review: Credits | None = None
    block_when_cap_reached: StrictBool | None = None
    deepseek_training_opt_in: StrictBool | None = None
    # `null` clears each (an empty threshold list too)
    notify_webhook_url: WebhookUrl | None = None
    notify_thresholds_percent: Thresholds | None = None
    notify_low_balance_credits: Credits | None = None

    @field_validator(
        "enabled", "reserve_credits_for_review", "block_when_cap_reached", "deepseek_training_opt_in", mode="before"
    )
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only for fields the caller sent, so an explicit null is refused here.
        if value is None:
            raise PydanticCustomError("not_nullable", "cannot be null (only caps can be cleared with null)")
        return value

    @classmethod
    def parse(cls, data: Any, webhook_networks: tuple[Network, ...] = ()) -> SettingsPatch:
        """Validate a decoded PATCH body; any problem is an `invalid_request` naming the field.
        `webhook_networks`: non-public networks a webhook URL may name (Config.notify_networks)."""
        if not isinstance(data, dict):
            raise ApiError("invalid_request", "the settings PATCH body must be a JSON object")
        try:
            return SettingsPatch.model_validate(data, context={"webhook_networks": webhook_networks})
        except ValidationError as exc:
            raise _as_api_error(exc) from None

    def hash_changes(self) -> tuple[dict[str, str], list[str]]:
        """(fields to set, fields to delete) for the stored hash."""
        to_set: dict[str, str] = {}
        to_delete: list[str] = []
        for name in self.model_fields_set:
            value = getattr(self, name)
            field = HASH_FIELDS[name]
            if value is None or value == ():
                to_delete.append(field)  # only caps and the notification fields get here (see _not_null)
            elif isinstance(value, tuple):
                to_set[field] = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                to_set[field] = "1" if value else "0"
            elif isinstance(value, Decimal):
                to_set[field] = str(_micro(value))
            else:
                to_set[field] = str(value)
        return to_set, sorted(to_delete)


if TYPE_CHECKING:
    SettingsPatch = _SettingsPatch
else:
    SettingsPatch = _with_limits("SettingsPatch", _SettingsPatch)


def _as_api_error(exc: ValidationError) -> ApiError:
    problems = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            problems.append((field, f"unknown field '{field}'; known fields: {', '.join(HASH_FIELDS)}"))
        elif field in _LIMITS and err["type"] in ("int_type", "greater_than_equal", "less_than_equal"):
            problems.append((field, f"'{field}' {limit_rule(_LIMITS[field])}"))
        else:
            problems.append((field, f"'{field}' {_message(err)}"))
    return ApiError("invalid_request", "Invalid settings: " + "; ".join(p[1] for p in problems), param=problems[0][0])


def _message(err: Any) -> str:
    if err["type"] in (
        "credits_type", "credits_value", "not_nullable", "url_type", "url_value", "url_address", "thresholds"
    ):  # fmt: skip
        return str(err["msg"])
    return "must be " + {
        "bool_type": "true or false (a boolean)",
        "int_type": "an integer (not a string or a decimal)",
    }.get(err["type"], f"valid: {err['msg']}")


class SettingsStore(Protocol):
    """Where settings live (Redis implements it in store/settings_store.py)."""

    async def get(self, account: str) -> AccountSettings: ...

    async def patch(self, account: str, patch: SettingsPatch, change: Change | None = None) -> AccountSettings:
        """Apply a validated patch; with `change`, atomically with its audit entry."""

    async def ensure_webhook_secret(self, account: str) -> str | None:
        """Give the account a webhook signing secret if it has none: the new secret (shown
        once), or None when one existed already."""
        ...
