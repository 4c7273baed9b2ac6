"""Redis key names. All of one account's keys share the hash tag `{a:<account>}`, so every
script touches a single Redis Cluster slot. Windows are in the names (UTC day / month), so
nothing ever has to be reset."""

from __future__ import annotations

import re

ACCOUNT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_account(account: str) -> str:
    """An account id, matched whole: `demo\n` is not a second account named demo."""
    if not ACCOUNT_RE.fullmatch(account):
        raise ValueError(f"invalid account id {account!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    return account


def _tag(account: str) -> str:
    return f"crt:{{a:{account}}}"


def account(account: str) -> str:
    """Hash: balance (the effective grants' remaining), held (open holds), expired (granted credits
    that expired unspent), grant_seq (the last grant number), micro-credits."""
    return f"{_tag(account)}:acct"


def settings(account: str) -> str:
    return f"{_tag(account)}:settings"


def holds(account: str) -> str:
    """Hash: request id -> "<held micro-credits>:<key id>|<grant>=<x>,..." (the credits held on each
    grant: store/lua/lib/grants.lua; store/lua/lib/hold_counters.lua)."""
    return f"{_tag(account)}:holds"


def grants(account: str) -> str:
    """Hash: grant id -> "remaining|held|priority|expires ms|effective ms|category|created ms|amount|state"
    (store/lua/lib/grants.lua): the account's live credit grants."""
    return f"{_tag(account)}:grants"


def grants_done(account: str) -> str:
    """Stream: grants that left the live hash (exhausted or expired), capped."""
    return f"{_tag(account)}:grants:done"


def hold_expiry(account: str) -> str:
    """Sorted set: request id scored by expiry (ms)."""
    return f"{_tag(account)}:holdexp"


def day(account: str, day: str) -> str:
    """Hash: admitted, requests, credits, in, out, and m:<model>:* / k:<key>:* rollups."""
    return f"{_tag(account)}:d:{day}"


def end_users(account: str, day: str) -> str:
    """Sorted set: the day's end users scored by credits (micro-credits), for the top N; only
    written for requests that name an end user (core/end_user.py)."""
    return f"{_tag(account)}:eu:{day}"


def end_user_counts(account: str, day: str) -> str:
    """Hash: the day's c:/r:/i:/o:<end user> (credits, requests, input and output tokens)."""
    return f"{_tag(account)}:euc:{day}"


def end_user_scratch(account: str) -> str:
    """Sorted set: store/lua/end_users.lua's working union, deleted before the script returns."""
    return f"{_tag(account)}:eu:scratch"


def end_user_month(account: str, month: str) -> str:
    """Hash: the month's credits (micro-credits) per end user, what end-user monthly caps count."""
    return f"{_tag(account)}:eum:{month}"


def end_user_limits(account: str, end_user: str) -> str:
    """Hash: one end user's own limits (the limit table's per-end-user rows), overriding the
    account's defaults."""
    return f"{_tag(account)}:eul:{end_user}"


def end_user_window(account: str, end_user: str) -> str:
    """Sorted set: the end user's admissions in the last minute (per-end-user rate limits)."""
    return f"{_tag(account)}:win:u:{end_user}"


def month(account: str, month: str) -> str:
    return f"{_tag(account)}:m:{month}"


def settled(account: str, request_id: str) -> str:
    """String: the micro-credits a settled request was charged (idempotency marker)."""
    return f"{_tag(account)}:done:{request_id}"


def usage_stream(account: str) -> str:
    return f"{_tag(account)}:usage"


def account_keys(account: str) -> str:
    """Set of key ids of the account."""
    return f"{_tag(account)}:keys"


def key_by_hash(key_hash: str) -> str:
    return f"crt:key:{key_hash}"


def key_by_id(key_id: str) -> str:
    return f"crt:keyid:{key_id}"


def key_children(account: str, key_id: str) -> str:
    """Set of the ids of the keys one key created (revoked with it)."""
    return f"{_tag(account)}:keychildren:{key_id}"


def capture_stream(account: str) -> str:
    """Stream of opted-in training captures (payloads; only for opted-in requests)."""
    return f"{_tag(account)}:capture"


# --- per-key controls and limits; all in the account's slot -------------------------------------
def key_controls(account: str, key_id: str) -> str:
    """Hash: one key's controls (core/key_controls.py), read by place_hold.lua."""
    return f"{_tag(account)}:keyctl:{key_id}"


def limiter(account: str) -> str:
    """Hash: live limiter state. tw, tw:<key>: the tokens in the account's and a key's minute
    window; n:<key>: a key's requests in flight and h:<key>: its held micro-credits, counted
    while the key has a concurrency limit or a credit cap (removed at zero)."""
    return f"{_tag(account)}:lim"


def hold_info(account: str) -> str:
    """Hash: request id -> its key and what its admission counted for it (store/lua/lib/
    hold_counters.lua), so settlement and the expiry sweep undo exactly that."""
    return f"{_tag(account)}:holdinfo"


def minute_window(account: str, key_id: str | None = None) -> str:
    """Sorted set: the requests admitted in the last minute under a per-minute limit, of the
    account (key_id None) or of one key; member '<request id>:<tokens>', score admission ms."""
    return f"{_tag(account)}:win" if key_id is None else f"{_tag(account)}:win:{key_id}"


def notify_outbox(account: str) -> str:
    """Stream of budget notification events waiting for webhook delivery (settle.lua writes)."""
    return f"{_tag(account)}:notify"


NOTIFY_DEAD = "crt:notify:dead"
"""List of budget notifications that could not be delivered (newest first), for the operator."""

NOTIFY_WAKE = "crt:notify:wake"
"""Pub/sub channel settle.lua announces a queued notification on (the outbox key as message)."""


def account_of_notify_outbox(key: str) -> str | None:
    prefix, suffix = "crt:{a:", "}:notify"
    if key.startswith(prefix) and key.endswith(suffix):
        account = key[len(prefix) : -len(suffix)]
        if ACCOUNT_RE.fullmatch(account):
            return account
    return None


# -- provisioning: idempotency records, audit streams, operator tokens ---------------------


def idempotency(account: str, digest: str) -> str:
    """Hash: the first result of a credit change made under one Idempotency-Key (its SHA-256)."""
    return f"{_tag(account)}:idem:{digest}"


def audit(account: str) -> str:
    """Stream of the provisioning changes to one account (keys, credits, settings)."""
    return f"{_tag(account)}:audit"


# Changes that belong to no account (operator tokens) go to one stream of their own.
OPERATOR_AUDIT = "crt:audit:operators"
OPERATOR_TOKENS = "crt:optokens"  # set of operator token ids


def operator_token(token_hash: str) -> str:
    return f"crt:optoken:{token_hash}"


def operator_token_id(token_id: str) -> str:
    """String: the token's hash."""
    return f"crt:optokenid:{token_id}"
