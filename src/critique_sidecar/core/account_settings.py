"""An account's Inference API settings (the product page's "Settings -> Connections" panel).

`AccountSettings` is the full, current state; `SettingsPatch` is a partial update (PATCH body
or CLI options). Both are validated here, once, and converted to and from the Redis hash
fields `store/lua/place_hold.lua` enforces.

Wire format (JSON):
- Credit amounts (`monthly_credit_cap`, `daily_credit_cap`, `reserve_credits_for_review`) are
  exact decimals, >= 0 with at most 6 decimal places (whole micro-credits), at most
  `MAX_CREDITS`. They may be sent as JSON numbers (`12.5`) or decimal strings (`"12.5"`):
  responses carry them as fixed 6-decimal strings, so what GET returns PATCHes back unchanged.
- `daily_request_cap` is a JSON integer (not `"12"`, not `12.0`), >= 0, at most `MAX_COUNT`.
- The switches are JSON booleans (not `"true"`, not `1`).
- `null` clears a cap (no limit); the switches and the floor cannot be null (a floor of 0 is
  "no floor"). A cap of 0 blocks all inference spend (hard mode) or warns on every request.
- Unknown fields are refused, so a typo never silently does nothing.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from .audit import Change
from .errors import ApiError
from .money import MICRO, format_credits
from .webhook_address import ALLOW_SETTING, Network, host_refusal, split_host_port

# Lua numbers are doubles: every stored amount stays below 2**53 micro-credits.
MAX_CREDITS = Decimal(1_000_000_000)
MAX_COUNT = 1_000_000_000

_ONE_MICRO = Decimal(1).scaleb(-6)
_DECIMAL_TEXT = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_CREDITS_RULE = f"a number of credits >= 0 and <= {MAX_CREDITS} with at most 6 decimal places"


def _credits(value: Any) -> Decimal:
    """Exact credits from a JSON number (int, or Decimal when parsed with parse_float=Decimal)
    or a plain decimal string. Floats are refused: they are not exact."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise PydanticCustomError("credits_type", f"must be {_CREDITS_RULE}")
    if isinstance(value, str):
        if not _DECIMAL_TEXT.match(value):
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
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]
# >>> limits: per-minute rate limits (enforced by place_hold.lua; docs/rate-limits.md)
MAX_RATE = {"requests_per_minute": 1_000_000, "tokens_per_minute": 1_000_000_000, "max_concurrent": 100_000}
RequestsPerMinute = Annotated[StrictInt, Field(ge=1, le=MAX_RATE["requests_per_minute"])]
TokensPerMinute = Annotated[StrictInt, Field(ge=1, le=MAX_RATE["tokens_per_minute"])]
MaxConcurrent = Annotated[StrictInt, Field(ge=1, le=MAX_RATE["max_concurrent"])]
# <<< limits

# Redis hash fields (read by place_hold.lua). Amounts are integer micro-credits.
H_ENABLED = "enabled"
H_DAILY_CREDIT_CAP = "daily_credit_cap"
H_MONTHLY_CREDIT_CAP = "monthly_credit_cap"
H_DAILY_REQUEST_CAP = "daily_request_cap"
H_RESERVE_FLOOR = "reserve_floor"
H_BLOCK = "block_when_cap_reached"
H_OPT_IN = "training_opt_in"
H_RPM = "rpm"  # limits
H_TPM = "tpm"
H_CONCURRENT = "max_concurrent"
# -- observe (issue 20): budget notifications (read by settle.lua's notification block) --------
H_NOTIFY_URL = "notify_url"
H_NOTIFY_THRESHOLDS = "notify_thresholds"  # "50,80,100": percent of each cap
H_NOTIFY_LOW_BALANCE = "notify_low_balance"  # micro-credits
H_NOTIFY_SECRET = "notify_secret"  # the webhook signing secret: never in the API's settings JSON
MAX_THRESHOLDS = 10
MAX_URL_CHARS = 2048
_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(:[0-9]{1,5})?(/[!-~]*)?$")


def _webhook_url(value: Any, info: ValidationInfo) -> str:
    """An absolute http(s) URL: printable ASCII, no credentials, no fragment, bounded length,
    and no literal private address or localhost unless the validation context's
    `webhook_networks` allow it (delivery checks every resolved address again:
    core/webhook_address.py). Delivery refuses http:// unless CRITIQUE_NOTIFY_ALLOW_HTTP."""
    if not isinstance(value, str):
        raise PydanticCustomError("url_type", "must be an http(s) URL string")
    rule = f"must be an absolute http:// or https:// URL of at most {MAX_URL_CHARS} characters, without credentials or fragment"
    if len(value) > MAX_URL_CHARS or not _URL.match(value) or "@" in value.split("/", 3)[2] or "#" in value:
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
    return tuple(int(p) for p in raw.split(",") if p.isdigit())


# -- end observe ----------------------------------------------------------------------------

# API field -> hash field
HASH_FIELDS = {
    "enabled": H_ENABLED,
    "monthly_credit_cap": H_MONTHLY_CREDIT_CAP,
    "daily_credit_cap": H_DAILY_CREDIT_CAP,
    "daily_request_cap": H_DAILY_REQUEST_CAP,
    "reserve_credits_for_review": H_RESERVE_FLOOR,
    "block_when_cap_reached": H_BLOCK,
    "deepseek_training_opt_in": H_OPT_IN,
    "requests_per_minute": H_RPM,  # limits
    "tokens_per_minute": H_TPM,
    "max_concurrent": H_CONCURRENT,
    # observe
    "notify_webhook_url": H_NOTIFY_URL,
    "notify_thresholds_percent": H_NOTIFY_THRESHOLDS,
    "notify_low_balance_credits": H_NOTIFY_LOW_BALANCE,
}


def _micro(amount: Decimal) -> int:
    return int(amount * MICRO)


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None  # place_hold.lua's tonumber() would not enforce it either


def _rate_or_none(raw: str | None) -> int | None:
    value = _int_or_none(raw)
    return value if value is not None and value >= 1 else None  # place_hold.lua ignores < 1


class AccountSettings(BaseModel):
    """The full settings of one account; the defaults are an account nobody configured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: StrictBool = True
    monthly_credit_cap: Credits | None = None
    daily_credit_cap: Credits | None = None
    daily_request_cap: Count | None = None
    reserve_credits_for_review: Credits = Decimal(0)
    block_when_cap_reached: StrictBool = True
    deepseek_training_opt_in: StrictBool = False
    requests_per_minute: RequestsPerMinute | None = None  # limits
    tokens_per_minute: TokensPerMinute | None = None
    max_concurrent: MaxConcurrent | None = None
    # -- observe: budget notifications
    notify_webhook_url: WebhookUrl | None = None
    notify_thresholds_percent: Thresholds = ()
    notify_low_balance_credits: Credits | None = None

    def to_json(self) -> dict[str, Any]:
        """The API representation: credit amounts as exact 6-decimal strings."""

        def credits(v: Decimal | None) -> str | None:
            return None if v is None else format_credits(_micro(v))

        return {
            "enabled": self.enabled,
            "monthly_credit_cap": credits(self.monthly_credit_cap),
            "daily_credit_cap": credits(self.daily_credit_cap),
            "daily_request_cap": self.daily_request_cap,
            "reserve_credits_for_review": credits(self.reserve_credits_for_review),
            "block_when_cap_reached": self.block_when_cap_reached,
            "deepseek_training_opt_in": self.deepseek_training_opt_in,
            "requests_per_minute": self.requests_per_minute,  # limits
            "tokens_per_minute": self.tokens_per_minute,
            "max_concurrent": self.max_concurrent,
            "notify_webhook_url": self.notify_webhook_url,
            "notify_thresholds_percent": list(self.notify_thresholds_percent),
            "notify_low_balance_credits": credits(self.notify_low_balance_credits),
        }

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> AccountSettings:
        """Read the stored hash with place_hold.lua's semantics, so what is shown is what is
        enforced: enabled and blocking unless '0', opt-in only when '1', a cap only when numeric."""

        def credits(raw: str | None) -> Decimal | None:
            micro = _int_or_none(raw)
            return None if micro is None else Decimal(micro) / MICRO

        return cls.model_construct(
            enabled=data.get(H_ENABLED) != "0",
            monthly_credit_cap=credits(data.get(H_MONTHLY_CREDIT_CAP)),
            daily_credit_cap=credits(data.get(H_DAILY_CREDIT_CAP)),
            daily_request_cap=_int_or_none(data.get(H_DAILY_REQUEST_CAP)),
            reserve_credits_for_review=credits(data.get(H_RESERVE_FLOOR)) or Decimal(0),
            block_when_cap_reached=data.get(H_BLOCK) != "0",
            deepseek_training_opt_in=data.get(H_OPT_IN) == "1",
            requests_per_minute=_rate_or_none(data.get(H_RPM)),  # limits
            tokens_per_minute=_rate_or_none(data.get(H_TPM)),
            max_concurrent=_rate_or_none(data.get(H_CONCURRENT)),
            notify_webhook_url=data.get(H_NOTIFY_URL) or None,
            notify_thresholds_percent=_thresholds_from_hash(data.get(H_NOTIFY_THRESHOLDS)),
            notify_low_balance_credits=credits(data.get(H_NOTIFY_LOW_BALANCE)),
        )


class SettingsPatch(BaseModel):
    """A partial update: only the fields present change; `null` clears a cap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: StrictBool | None = None
    monthly_credit_cap: Credits | None = None
    daily_credit_cap: Credits | None = None
    daily_request_cap: Count | None = None
    reserve_credits_for_review: Credits | None = None
    block_when_cap_reached: StrictBool | None = None
    deepseek_training_opt_in: StrictBool | None = None
    requests_per_minute: RequestsPerMinute | None = None  # limits
    tokens_per_minute: TokensPerMinute | None = None
    max_concurrent: MaxConcurrent | None = None
    # -- observe: `null` clears each (an empty threshold list too)
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
            return cls.model_validate(data, context={"webhook_networks": webhook_networks})
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
                to_set[field] = _flag(value)
            elif isinstance(value, Decimal):
                to_set[field] = str(_micro(value))
            else:
                to_set[field] = str(value)
        return to_set, sorted(to_delete)


def _as_api_error(exc: ValidationError) -> ApiError:
    problems = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else None
        if err["type"] == "extra_forbidden":
            problems.append((field, f"unknown field '{field}'; known fields: {', '.join(HASH_FIELDS)}"))
        elif field in MAX_RATE and err["type"] in ("int_type", "greater_than_equal", "less_than_equal"):
            problems.append((field, f"'{field}' must be an integer from 1 to {MAX_RATE[field]}, or null"))
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
        "greater_than_equal": f"an integer >= 0 and <= {MAX_COUNT}",
        "less_than_equal": f"an integer >= 0 and <= {MAX_COUNT}",
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
