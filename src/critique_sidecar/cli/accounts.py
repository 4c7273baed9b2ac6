"""`credits` (the shared credit pool) and `settings` (an account's Inference API settings)."""

from __future__ import annotations

import argparse
import json
import re
import uuid
from typing import TYPE_CHECKING, Any

from ..core.limit_table import ACCOUNT_LIMITS, Limit
from ..core.money import format_credits
from .common import CliError, _cli_change, _provisioning

if TYPE_CHECKING:
    from ..config import Config


def limit_flags(rows: tuple[Limit, ...]) -> dict[str, tuple[str, str, str]]:
    """flag -> (JSON field, metavar, help) for the limits of one scope (core/limit_table.py)."""
    return {row.flag: (row.name, "CREDITS|none" if row.credits else "N|none", row.help) for row in rows}


# `settings set` flag -> (settings field, metavar, help). Values go through the same
# validation as the settings API (core.account_settings.SettingsPatch).
_SETTING_FLAGS = {
    "--enabled": ("enabled", "true|false", "turn the Inference API on or off"),
    **limit_flags(ACCOUNT_LIMITS),
    "--reserve-floor": ("reserve_credits_for_review", "CREDITS", "balance floor inference may never spend into"),
    "--block-when-cap-reached": (
        "block_when_cap_reached",
        "true|false",
        "false: over-cap requests pass with a warning",
    ),
    "--training-opt-in": ("deepseek_training_opt_in", "true|false", "DeepSeek V4 Flash training opt-in (75%% off)"),
    "--notify-webhook-url": (
        "notify_webhook_url",
        "URL|none",
        "budget notifications webhook (https://); none turns them off",
    ),
    "--notify-thresholds": (
        "notify_thresholds_percent",
        "P,P,...|none",
        "percent of each cap that notifies, e.g. 50,80,100",
    ),
    "--notify-low-balance": ("notify_low_balance_credits", "CREDITS|none", "notify when the balance falls to this"),
}


def _cli_setting(field: str, text: str) -> object:
    """As _setting_value, with the threshold list as comma-separated integers."""
    if field == "notify_thresholds_percent" and text.strip().lower() not in ("none", "null"):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return [int(p) if re.fullmatch(r"[0-9]+", p) else p for p in parts]
    return _setting_value(text)


def _setting_value(text: str) -> object:
    """CLI text -> the JSON value the settings API would receive (validated afterwards)."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if re.fullmatch(r"-?[0-9]+", low):
        return int(low)
    return text.strip()  # credits as a decimal string; anything else fails validation


async def _credits_cmd(args: argparse.Namespace, redis: Any) -> int:
    from ..store.accounts import RedisAccounts

    accounts = RedisAccounts(redis)
    if args.action == "grant":
        from decimal import Decimal

        from ..provisioning.schemas import CreditChange, parse

        action = "credits.grant" if args.credits >= 0 else "credits.debit"
        if args.credits == 0:
            raise CliError("--credits must not be 0")
        data: dict[str, Any] = {"credits": str(Decimal(abs(args.credits)) / 1_000_000)}
        for name in ("category", "effective_at", "expires_at", "priority"):
            if getattr(args, name) is not None:
                data[name] = getattr(args, name)
        body = parse(CreditChange, data, "credit change")
        idem = args.idempotency_key or "cli_" + uuid.uuid4().hex
        result, replayed = await _provisioning(redis).change_credits(_cli_change(), args.account, action, body, idem)
        note = " (already applied under this idempotency key: nothing changed)" if replayed else ""
        grant = f" (grant {result.grant_id})" if result.grant_id else ""
        print(f"account {args.account}: balance {result.balance_after} credits{grant}{note}")
        return 0
    if args.action == "grants":
        listed = await _provisioning(redis).grants(args.account)
        if args.json:
            print(listed.model_dump_json())
            return 0
        print("id\tcategory\tstate\tremaining\theld\tpriority\teffective_at\texpires_at")
        for g in listed.data:
            row = (
                g.id,
                g.category,
                g.state,
                g.remaining,
                g.held,
                g.priority,
                g.effective_at or "-",
                g.expires_at or "never",
            )
            print("\t".join(str(x) for x in row))
        return 0
    b = await accounts.balance(args.account)
    out = {
        "account": args.account,
        "balance": format_credits(b.balance),
        "held": format_credits(b.held),
        "available": format_credits(b.balance - b.held),
        "open_holds": b.open_holds,
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    return 0


async def _settings_cmd(args: argparse.Namespace, redis: Any, config: Config) -> int:
    from ..core.account_settings import SettingsPatch
    from ..core.errors import ApiError
    from ..store.settings_store import RedisSettingsStore

    store = RedisSettingsStore(redis)
    if args.action == "show":
        current = await store.get(args.account)
    else:
        given: dict[str, str] = {}
        for flag in _SETTING_FLAGS:
            text = getattr(args, flag[2:].replace("-", "_"))
            if text is not None:
                given[flag] = text
        secret_arg = args.notify_webhook_secret
        if secret_arg is not None and secret_arg != "generate" and not re.fullmatch(r"[!-~]{24,256}", secret_arg):
            raise CliError("--notify-webhook-secret: use 24-256 printable ASCII characters, or 'generate'")
        if not given and secret_arg is None:
            raise CliError(f"settings set: give at least one of {', '.join(_SETTING_FLAGS)}")
        try:
            patch = SettingsPatch.parse(
                {_SETTING_FLAGS[f][0]: _cli_setting(_SETTING_FLAGS[f][0], v) for f, v in given.items()},
                config.notify_networks,
            )
        except ApiError as exc:
            bad = next((f for f, (field, _, _) in _SETTING_FLAGS.items() if field == exc.param), None)
            raise CliError(f"{bad}: {exc.message}" if bad else exc.message) from None
        current = await store.patch(args.account, patch) if given else await store.get(args.account)
        if secret_arg is not None:
            new_secret: str | None = await store.set_webhook_secret(
                args.account, None if secret_arg == "generate" else secret_arg
            )
        else:
            new_secret = await store.ensure_webhook_secret(args.account) if current.notify_webhook_url else None
    out = current.to_json()
    if args.action == "set" and new_secret is not None:
        out["notify_webhook_secret"] = new_secret  # shown once
    if args.json:
        print(json.dumps(out))
    else:
        for name, value in out.items():
            if isinstance(value, list):  # the notification thresholds
                value = ",".join(str(v) for v in value) or None
            text = "none" if value is None else str(value).lower() if isinstance(value, bool) else value
            print(f"{name}: {text}")
    return 0
