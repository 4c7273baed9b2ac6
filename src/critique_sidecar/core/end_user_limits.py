"""An end user's own limits: the limit table's per-end-user rows (core/limit_table.py, `each`
"end_user"), named without their prefix: daily_credit_cap, monthly_credit_cap,
requests_per_minute. The account's settings `end_user_<name>` are the defaults for every end
user; an end user's own value overrides its default (0 for a cap: that end user may spend
nothing). Values follow the account settings' rules (exact decimals, null clears)."""

from __future__ import annotations

from typing import Any, Protocol

from .account_settings import AccountSettings, SettingsPatch, limit_to_json
from .errors import ApiError
from .limit_table import END_USER_LIMITS, Limit, stored_value

ROWS: dict[str, Limit] = {row.name.removeprefix("end_user_"): row for row in END_USER_LIMITS}


def parse_changes(data: Any) -> tuple[dict[str, str], list[str]]:
    """A decoded PUT body as (hash fields to set, hash fields to delete); a bad field is a 400
    naming it, and nothing changes."""
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "the end user's limits must be a JSON object")
    unknown = [k for k in data if k not in ROWS]
    if unknown:
        raise ApiError(
            "invalid_request",
            f"unknown field '{unknown[0]}'; known fields: {', '.join(ROWS)}",
            param=str(unknown[0]),
        )
    try:
        patch = SettingsPatch.parse({ROWS[k].name: v for k, v in data.items()})
    except ApiError as exc:  # named as the caller named it
        short = (exc.param or "").removeprefix("end_user_")
        raise ApiError("invalid_request", exc.message.replace(exc.param or "\0", short), param=short) from None
    return patch.hash_changes()


def to_json(stored: dict[str, str]) -> dict[str, Any]:
    """The end user's own values (None: the account's default applies)."""
    return {name: limit_to_json(row, stored_value(row, stored.get(row.field))) for name, row in ROWS.items()}


def defaults(settings: AccountSettings) -> dict[str, Any]:
    return {name: limit_to_json(row, settings.limit(row.name)) for name, row in ROWS.items()}


def effective(own: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """What admission applies to the end user: its own value, else the account's default."""
    return {name: own[name] if own[name] is not None else default[name] for name in ROWS}


class EndUserLimitsStore(Protocol):
    async def get(self, account: str, end_user: str) -> dict[str, str]:
        """The end user's stored limit fields."""
        ...

    async def change(self, account: str, end_user: str, to_set: dict[str, str], to_delete: list[str]) -> None:
        """Set and delete fields at once (an empty result removes the hash)."""
        ...
