"""`end-users`: one end user's own limits (core/end_user_limits.py), overriding the account's
defaults (`settings set --end-user-daily-credit-cap ...`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core import end_user, end_user_limits
from ..core.errors import ApiError
from .accounts import _setting_value
from .common import CliError

# flag -> the end user's limit (its JSON field)
FLAGS = {
    "--daily-credit-cap": "daily_credit_cap",
    "--monthly-credit-cap": "monthly_credit_cap",
    "--rpm": "requests_per_minute",
}


def add_commands(sub: Any) -> None:
    cmds = sub.add_parser("end-users", help="an end user's own limits").add_subparsers(dest="action", required=True)
    show = cmds.add_parser("show", help="an end user's own limits, the account's defaults and what applies")
    change = cmds.add_parser("set-limits", help="set or clear (none) some of an end user's own limits")
    for p in (show, change):
        p.add_argument("--account", required=True)
        p.add_argument("--end-user", required=True)
        p.add_argument("--json", action="store_true")
    for flag, name in FLAGS.items():
        row = end_user_limits.ROWS[name]
        change.add_argument(flag, metavar="CREDITS|none" if row.credits else "N|none", help=f"this end user's {name}")


async def run(args: argparse.Namespace, redis: Any) -> int:
    from ..store.end_user_limits import RedisEndUserLimits
    from ..store.settings_store import RedisSettingsStore

    store = RedisEndUserLimits(redis)
    try:
        user = end_user.checked(args.end_user, "end_user")
        if args.action == "set-limits":
            given = {
                name: _setting_value(text)
                for flag, name in FLAGS.items()
                if (text := getattr(args, flag[2:].replace("-", "_"))) is not None
            }
            if not given:
                raise CliError(f"end-users set-limits: give at least one of {', '.join(FLAGS)}")
            to_set, to_delete = end_user_limits.parse_changes(given)
            await store.change(args.account, user, to_set, to_delete)
    except ApiError as exc:
        flag = next((f for f, name in FLAGS.items() if name == exc.param), "--end-user")
        raise CliError(f"{flag}: {exc.message}") from None
    own = end_user_limits.to_json(await store.get(args.account, user))
    default = end_user_limits.defaults(await RedisSettingsStore(redis).get(args.account))
    applied = end_user_limits.effective(own, default)
    if args.json:
        print(json.dumps({"end_user": user, "limits": own, "defaults": default, "effective": applied}))
    else:
        for name in end_user_limits.ROWS:
            shown = "none" if applied[name] is None else applied[name]
            origin = "own" if own[name] is not None else "account default"
            print(f"{name}: {shown} ({origin})")
    return 0
