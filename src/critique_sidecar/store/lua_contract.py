"""The ledger scripts' contract, named once: the KEYS, ARGV and reply of place_hold.lua and
settle.lua, and the limit table they enforce (core/limit_table.py).

Python builds KEYS and ARGV from these named tuples and reads replies by name; each script gets a
generated prelude that binds the same names (`K_holds`, `A_request_id`, `REPLY{code = ...}`)
and the limit rows, so neither side counts positions. Lua files may also pull shared code in with
a line `--#include NAME` (store/lua/lib/NAME.lua)."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from ..core.limit_table import ACCOUNT_LIMITS, KEY_LIMITS, LIMITS, Limit


class HoldKeys(NamedTuple):
    account: str  # hash: balance, held
    settings: str  # hash: the account's settings and limits
    holds: str  # hash: request id -> held micro-credits
    hold_expiry: str  # sorted set: request id by expiry ms
    day: str  # hash: the UTC day's counters and rollups
    month: str  # hash: the UTC month's counters
    key_controls: str  # hash: the key's controls and limits
    limiter: str  # hash: per-key held credits and requests in flight, minute-window token sums
    hold_info: str  # hash: request id -> what its admission counted (for settlement and expiry)
    account_window: str  # sorted set: the account's last minute of admissions
    key_window: str  # sorted set: the key's
    notify_outbox: str  # stream: a spend rate's trip is announced here (accounts with a webhook)
    end_user_limits: str  # hash: the request's end user's own limits (overriding the account's defaults)
    end_user_window: str  # sorted set: the end user's last minute of admissions
    end_user_counts: str  # hash: the day's counts per end user (c:<id>: credits)
    end_user_month: str  # hash: the month's credits per end user
    grants: str  # hash: grant id -> its packed state (store/lua/lib/grants.lua)
    grants_done: str  # stream: exhausted and expired grants (capped history)


class HoldArgs(NamedTuple):
    request_id: str
    amount: int  # micro-credits: the request's maximum cost
    now_ms: int
    expires_ms: int  # when the hold expires unless renewed or settled
    window_ttl_s: int  # lifetime of the day and month hashes
    key_id: str
    model: str
    tokens: int  # input bound + output bound (tokens-per-minute limits)
    end_user: str  # "" when the request names none
    grant_notice_ms: int  # a grant this close to its expiry is announced once (grant.expiring); 0: never


class HoldReply(NamedTuple):
    code: str  # ok, or the refusal's error code
    warnings: str  # comma list of soft caps passed over
    training_opt_in: int
    balance: int
    floor: int
    held: int
    control: str  # the refusing control: scope:name:limit, the expiry ms, or the model
    retry_ms: int  # rate limits: ms until the request fits; -1: it never can
    requests_limit: int  # the tightest per-minute limits (-1: none applies)
    requests_remaining: int
    requests_reset_ms: int
    tokens_limit: int
    tokens_remaining: int
    tokens_reset_ms: int


class SettleKeys(NamedTuple):
    account: str
    holds: str
    hold_expiry: str
    day: str
    month: str
    done: str  # string: the charge of a settled request (idempotency marker)
    usage: str  # stream: usage records
    limiter: str
    hold_info: str
    account_window: str
    key_window: str
    settings: str
    notify_outbox: str  # stream: budget notifications waiting for delivery
    end_users: str  # sorted set: the day's end users by credits (written only for a named end user)
    end_user_counts: str  # hash: the day's counts per end user
    end_user_month: str  # hash: the month's credits per end user (end-user monthly caps)
    grants: str
    grants_done: str


class SettleArgs(NamedTuple):
    request_id: str
    charge: int  # micro-credits
    window_ttl_s: int
    done_ttl_s: int
    record: bytes  # the usage record: a JSON array of field/value strings, one argument
    model: str
    key_id: str
    endpoint: str  # core/endpoints' name: the dashboard's usage by endpoint
    end_user: str  # core/end_user.py's id, "" when none: the dashboard's usage by end user
    input_tokens: int
    output_tokens: int
    day: str  # window names, for notifications
    month: str
    now_ms: int


class SettleReply(NamedTuple):
    applied: int  # 0: already settled (charged is the first settlement's)
    charged: int


CONTRACTS: dict[str, tuple[type[Any], type[Any], type[Any]]] = {
    "place_hold": (HoldKeys, HoldArgs, HoldReply),
    "settle": (SettleKeys, SettleArgs, SettleReply),
}

_NAME = re.compile(r"[a-z_][a-z0-9_:]*")


def _lua_string(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise ValueError(f"not a plain name: {text!r}")
    return f"'{text}'"


def _limit_row(row: Limit, position: int) -> str:
    """One limit as a Lua table; `position` is its place in the table (checks run in that order)."""
    values = {
        "scope": _lua_string(row.scope),
        "name": _lua_string(row.name),
        "mechanism": _lua_string(row.mechanism),
        "unit": _lua_string(row.unit),
        "window": _lua_string(row.window),
        "field": _lua_string(row.field),
        "code": _lua_string(row.code),
        "soft": "true" if row.soft else "false",
        "least": str(row.least),
        "each": _lua_string(row.each) if row.each else "''",
        "position": str(position),
    }
    return "{" + ", ".join(f"{k} = {v}" for k, v in values.items()) + "}"


def _row_function(name: str, rows: tuple[Limit, ...]) -> str:
    """NAME(i): the i-th row of one scope (its field is the i-th of the scope's HMGET), built only
    when asked for."""
    position = {id(row): i for i, row in enumerate(LIMITS, 1)}
    branches = "\n".join(
        f"  if i == {i} then return {_limit_row(row, position[id(row)])} end" for i, row in enumerate(rows, 1)
    )
    return f"local function {name}(i)\n{branches}\nend\n"


def limits_prelude() -> str:
    """The limit table for Lua: ACCOUNT_LIMIT(i) and KEY_LIMIT(i), LIMIT_COUNT (rows carry their
    `position` in the table, 1..LIMIT_COUNT), the hash fields each scope's HMGET appends (the
    i-th field is row i's), and the window counters the caps need. Rows are built only for
    limits that are set: an account without limits pays for none."""
    account_fields = ", ".join(_lua_string(row.field) for row in ACCOUNT_LIMITS)
    per_end_user = [(i, row) for i, row in enumerate(ACCOUNT_LIMITS, 1) if row.each == "end_user"]
    end_user_fields = ", ".join(_lua_string(row.field) for _, row in per_end_user)
    end_user_index = ", ".join(str(i) for i, _ in per_end_user)
    key_fields = ", ".join(_lua_string(row.field) for row in KEY_LIMITS)
    counters = {unit: _counters(unit) for unit in ("requests", "credits")}
    return (
        _row_function("ACCOUNT_LIMIT", ACCOUNT_LIMITS)
        + _row_function("KEY_LIMIT", KEY_LIMITS)
        + f"local LIMIT_COUNT = {len(LIMITS)}\n"
        f"local ACCOUNT_LIMIT_FIELDS = {{{account_fields}}}\n"
        f"local KEY_LIMIT_FIELDS = {{{key_fields}}}\n"
        f"local END_USER_FIELDS = {{{end_user_fields}}}\n"
        f"local END_USER_INDEX = {{{end_user_index}}}\n"
        f"local REQUEST_COUNTERS = {{{counters['requests']}}}\n"
        f"local CREDIT_COUNTERS = {{{counters['credits']}}}\n"
    )


def _counters(unit: str) -> str:
    """The (window, scope) counters the caps of one unit need, each once: admission counts
    requests, settlement credits."""
    pairs = dict.fromkeys((row.window, row.scope) for row in LIMITS if row.mechanism == "cap" and row.unit == unit)
    return ", ".join(f"{{{_lua_string(w)}, {_lua_string(s)}}}" for w, s in pairs)


def prelude(name: str) -> str:
    """The generated head of a contract script: K_<key>, A_<arg>, REPLY and the limit table.
    Locals rather than tables: nothing is built per call that the call may not use."""
    keys, args, reply = CONTRACTS[name]
    k_names = ", ".join(f"K_{f}" for f in keys._fields)
    k_values = ", ".join(f"KEYS[{i}]" for i in range(1, len(keys._fields) + 1))
    a_names = ", ".join(f"A_{f}" for f in args._fields)
    a_values = ", ".join(f"ARGV[{i}]" for i in range(1, len(args._fields) + 1))
    r = ", ".join(f"r.{f}" for f in reply._fields)
    return (
        f"-- generated by store/lua_contract.py\n"
        f"local {k_names} = {k_values}\n"
        f"local {a_names} = {a_values}\n"
        f"local function REPLY(r) return {{{r}}} end\n" + limits_prelude()
    )
