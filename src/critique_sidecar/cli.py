"""`critique-sidecar`: serve, and the operator commands for keys and the shared credit pool."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeAlias
from urllib.parse import urlsplit

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .config import Config
from .core.catalog import CatalogError
from .core.errors import ApiError, StoreUnavailable
from .core.money import format_credits, parse_credits
from .core.scopes import DEFAULT_KEY_SCOPES, parse_scopes
from .observability.logs import configure_logging


class CliError(Exception):
    """A one-line message for the operator; exit status 2."""


def _scopes(text: str) -> tuple[str, ...]:
    try:
        return parse_scopes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _credits(text: str) -> int:
    try:
        return parse_credits(text)
    except (ValueError, ArithmeticError):
        raise argparse.ArgumentTypeError(
            f"invalid credit amount {text!r}: use a number with at most 6 decimals"
        ) from None


# `settings set` flag -> (settings field, metavar, help). Values go through the same
# validation as the settings API (core.account_settings.SettingsPatch).
_SETTING_FLAGS = {
    "--enabled": ("enabled", "true|false", "turn the Inference API on or off"),
    "--daily-credit-cap": ("daily_credit_cap", "CREDITS|none", "daily inference credit cap (UTC day); none clears it"),
    "--monthly-credit-cap": (
        "monthly_credit_cap",
        "CREDITS|none",
        "monthly inference credit cap (UTC month); none clears it",
    ),
    "--daily-request-cap": ("daily_request_cap", "N|none", "daily request cap (UTC day); none clears it"),
    "--reserve-floor": ("reserve_credits_for_review", "CREDITS", "balance floor inference may never spend into"),
    "--block-when-cap-reached": (
        "block_when_cap_reached",
        "true|false",
        "false: over-cap requests pass with a warning",
    ),
    "--training-opt-in": ("deepseek_training_opt_in", "true|false", "DeepSeek V4 Flash training opt-in (75%% off)"),
    "--rpm": ("requests_per_minute", "N|none", "the account's requests per minute; none clears it"),
    "--tpm": ("tokens_per_minute", "N|none", "the account's tokens per minute (input + max output at admission)"),
    "--max-concurrent": ("max_concurrent", "N|none", "the account's requests in flight at once; none clears it"),
    # -- observe: budget notifications
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


# --- per-key controls (issue 17/18): `keys create` and `keys set-limits` flags ----------------
# flag -> (KeyControls JSON field, metavar, help). Values go through KeyControls.patched.
_KEY_CONTROL_FLAGS = {
    "--expires-at": ("expires_at", "TIME|none", "expiry: 2026-12-31T00:00:00Z or 2026-12-31 (UTC); none: never"),
    "--models": ("models", "M1,M2|none", "the only models the key may use; none: every model"),
    "--daily-credit-cap": ("daily_credit_cap", "CREDITS|none", "the key's own daily credit cap (UTC day, always hard)"),
    "--rpm": ("requests_per_minute", "N|none", "the key's requests per minute"),
    "--tpm": ("tokens_per_minute", "N|none", "the key's tokens per minute (input + max output at admission)"),
    "--max-concurrent": ("max_concurrent", "N|none", "the key's requests in flight at once"),
}


def _add_key_control_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (_, metavar, text) in _KEY_CONTROL_FLAGS.items():
        parser.add_argument(flag, metavar=metavar, help=text)


def _key_controls_given(args: argparse.Namespace) -> dict[str, object]:
    """The JSON object the provisioning API would receive for the flags given."""
    given: dict[str, object] = {}
    for flag, (field, _, _) in _KEY_CONTROL_FLAGS.items():
        text = getattr(args, flag[2:].replace("-", "_"))
        if text is None:
            continue
        low = text.strip().lower()
        if low in ("none", "null"):
            given[field] = None
        elif field == "models":
            given[field] = [m.strip() for m in text.split(",")]
        elif field in ("expires_at", "daily_credit_cap"):
            given[field] = text.strip()
        else:
            given[field] = int(low) if re.fullmatch(r"-?[0-9]+", low) else text.strip()
    return given


def _key_controls(current: Any, given: dict[str, object], catalog_path: Any) -> Any:
    from .core.catalog import load_catalog
    from .core.errors import ApiError

    known = {m.id for m in load_catalog(catalog_path).models}
    try:
        return current.patched(given, known_models=known)
    except ApiError as exc:
        flag = next((f for f, (field, _, _) in _KEY_CONTROL_FLAGS.items() if field == exc.param), None)
        raise CliError(f"{flag}: {exc.message}" if flag else exc.message) from None


# --- end per-key controls ------------------------------------------------------------------------


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


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line naming the command and the problem, exit status 2 (no usage dump;
    `--help` still shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


Commands: TypeAlias = "argparse._SubParsersAction[_OneLineParser]"


def _envoy_product_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sidecar-grpc", action="append", help="sidecar gRPC address (repeat for several processes)")
    p.add_argument("--sidecar-http", default="127.0.0.1:9002", help="sidecar HTTP address")
    p.add_argument(
        "--chat-auth",
        choices=["ext_proc", "ext_authz"],
        default="ext_proc",
        help="authorise chat inside the one ext_proc stream (default) or with ext_authz too",
    )
    p.add_argument(
        "--sidecar-tls-ca", metavar="FILE", help="gRPC to the sidecar over TLS: CA that signed its certificate"
    )
    p.add_argument("--sidecar-tls-cert", metavar="FILE", help="mTLS: client certificate Envoy presents to the sidecar")
    p.add_argument("--sidecar-tls-key", metavar="FILE", help="mTLS: that certificate's private key")
    p.add_argument(
        "--sidecar-tls-sni", metavar="NAME", help="server name to send and to verify in the sidecar's certificate"
    )


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="critique-sidecar", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_serving_commands, _envoy_config_command, _keys_commands, _credits_commands, _settings_commands,
                _usage_commands, _notify_commands, _operator_token_parser):  # fmt: skip
        add(sub)
    return p


def _serving_commands(sub: Commands) -> None:
    sub.add_parser("serve", help="run the gRPC (ext_authz, ext_proc, health) and HTTP servers")

    gateway = sub.add_parser("gateway", help="run the ASGI gateway: the whole product without Envoy (uvicorn)")
    gateway.add_argument("--listen", help="listen address (default: CRITIQUE_GATEWAY_LISTEN, 127.0.0.1:8090)")

    sub.add_parser("config-table", help="print the configuration reference table (Markdown)")


def _envoy_config_command(sub: Commands) -> None:
    envoy = sub.add_parser("envoy-config", help="print the Envoy config generated from the catalog")
    envoy.add_argument("--listen", default="127.0.0.1:8080", help="Envoy listener address (IP:PORT, [IPv6]:PORT)")
    envoy.add_argument("--admin", default="127.0.0.1:9901", help="Envoy admin address (IP:PORT)")
    envoy.add_argument("--stat-prefix", default="ingress", help="the listener's HTTP stat prefix (alerts use it)")
    envoy.add_argument("--virtual-host", default="critique", help="name of the product's virtual host")
    _envoy_path_prefix_option(envoy)
    envoy.add_argument(
        "--fragment",
        action="store_true",
        help="print only what the product adds to an existing Envoy (filters, routes, local replies, clusters)",
    )
    _envoy_product_options(envoy)
    merge = sub.add_parser(
        "envoy-merge", help="insert the product into an existing Envoy bootstrap; the result goes to stdout"
    )
    merge.add_argument("bootstrap", help="your Envoy bootstrap (YAML or JSON)")
    merge.add_argument("--listener", help="the listener to add the product to (needed when there are several)")
    merge.add_argument("--virtual-host", help="the virtual host to add the routes to (needed when there are several)")
    _envoy_path_prefix_option(merge)
    _envoy_product_options(merge)


def _envoy_path_prefix_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path-prefix",
        default="",
        help="serve every product path under this prefix (e.g. /llm: /llm/api/v1/chat/completions)",
    )


def _keys_commands(sub: Commands) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--account", required=True)
    create.add_argument("--scopes", type=_scopes, default=DEFAULT_KEY_SCOPES, help="comma-separated scopes")
    create.add_argument("--name", default="")
    create.add_argument("--json", action="store_true", help="machine-readable output")
    _add_key_control_flags(create)
    lst = keys.add_parser("list", help="list an account's keys (never the keys themselves)")
    lst.add_argument("--account", required=True)
    lst.add_argument("--json", action="store_true")
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    rotate = keys.add_parser("rotate", help="new secret, same key id and settings (printed once)")
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--grace-seconds",
        type=int,
        help="how long the old secret keeps working (default CRITIQUE_KEY_ROTATION_GRACE_S)",
    )
    rotate.add_argument("--json", action="store_true")
    set_limits = keys.add_parser("set-limits", help="change a key's controls (the others stay as they are)")
    set_limits.add_argument("key_id")
    set_limits.add_argument("--json", action="store_true")
    _add_key_control_flags(set_limits)
    show_limits = keys.add_parser("show-limits", help="a key's controls")
    show_limits.add_argument("key_id")
    show_limits.add_argument("--json", action="store_true")


def _credits_commands(sub: Commands) -> None:
    credits = sub.add_parser("credits", help="the shared credit pool").add_subparsers(dest="action", required=True)
    grant = credits.add_parser("grant", help="add credits (negative to debit)")
    grant.add_argument("--account", required=True)
    grant.add_argument("--credits", required=True, type=_credits)
    grant.add_argument(
        "--idempotency-key", help="apply at most once under this key (a retry prints the first result); default: new"
    )
    show = credits.add_parser("show", help="balance and open holds")
    show.add_argument("--account", required=True)
    show.add_argument("--json", action="store_true")


def _settings_commands(sub: Commands) -> None:
    account_settings = sub.add_parser("settings", help="an account's Inference API settings")
    settings_cmds = account_settings.add_subparsers(dest="action", required=True)
    sshow = settings_cmds.add_parser("show", help="the account's settings")
    sshow.add_argument("--account", required=True)
    sshow.add_argument("--json", action="store_true")
    sset = settings_cmds.add_parser("set", help="change some settings (the others stay as they are)")
    sset.add_argument("--account", required=True)
    sset.add_argument("--json", action="store_true")
    for flag, (_, metavar, text) in _SETTING_FLAGS.items():
        sset.add_argument(flag, metavar=metavar, help=text)
    sset.add_argument(
        "--notify-webhook-secret",
        metavar="SECRET|generate",
        help="set the webhook signing secret (>= 24 characters), or generate a new one (printed once)",
    )


def _usage_commands(sub: Commands) -> None:
    usage = sub.add_parser("usage", help="usage records: billing export, retention trim, accounts with usage")
    usage_cmds = usage.add_subparsers(dest="action", required=True)
    export = usage_cmds.add_parser(
        "export", help="read an account's usage records as a consumer group, print JSON lines, acknowledge them"
    )
    export.add_argument("--account", required=True)
    export.add_argument("--group", required=True, help="consumer group (created on first use)")
    export.add_argument("--consumer", default="c1", help="consumer name within the group")
    export.add_argument("--count", type=int, default=100, help="most records to read (default 100)")
    export.add_argument(
        "--min-idle-ms", type=int, default=60_000, help="take over other consumers' records unacknowledged this long"
    )
    export.add_argument(
        "--start-id", default="0", help="where a new group starts: 0 = every retained record, $ = only new ones"
    )
    export.add_argument("--no-ack", action="store_true", help="print without acknowledging (they are delivered again)")
    trim = usage_cmds.add_parser(
        "trim", help="apply retention now (never drops records a consumer group has not acknowledged)"
    )
    trim.add_argument("--account", help="one account (default: every account with usage)")
    trim.add_argument("--retention-days", type=float, help="default: CRITIQUE_USAGE_RETENTION_DAYS")
    trim.add_argument("--json", action="store_true")
    accounts = usage_cmds.add_parser("accounts", help="list accounts that have a usage stream")
    accounts.add_argument(
        "--rebuild", action="store_true", help="first re-register every account found by scanning Redis"
    )
    # -- observe: usage push
    push = usage_cmds.add_parser("push", help="push usage records as CloudEvents batches to CRITIQUE_USAGE_PUSH_URL")
    push.add_argument("--url", help="endpoint (default: CRITIQUE_USAGE_PUSH_URL)")
    push.add_argument("--once", action="store_true", help="push until nothing is left, then exit")


def _notify_commands(sub: Commands) -> None:  # observe: budget notifications
    nworker = sub.add_parser("notify-worker", help="deliver budget notifications to the accounts' webhooks")
    nworker.add_argument("--once", action="store_true", help="deliver what is queued (with retries), then exit")
    notify = sub.add_parser("notify", help="budget notifications").add_subparsers(dest="action", required=True)
    dead = notify.add_parser("dead-letters", help="notifications that could not be delivered (newest first)")
    dead.add_argument("--count", type=int, default=50)
    dead.add_argument("--json", action="store_true")


def _operator_token_parser(sub: Any) -> None:
    from .core.operator_tokens import OPERATOR_SCOPES

    def scopes(text: str) -> tuple[str, ...]:
        from .core.operator_tokens import parse_operator_scopes

        try:
            return parse_operator_scopes(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    tokens = sub.add_parser("operator-tokens", help="credentials of the provisioning API (CRITIQUE_ADMIN_LISTEN)")
    cmds = tokens.add_subparsers(dest="action", required=True)
    create = cmds.add_parser("create", help="create a token (printed once)")
    create.add_argument("--name", required=True, help="who or what uses it (shown in the audit trail)")
    create.add_argument(
        "--scopes", required=True, type=scopes, help=f"comma-separated: {','.join(OPERATOR_SCOPES)} or all"
    )
    create.add_argument("--json", action="store_true")
    lst = cmds.add_parser("list", help="every token (never the tokens themselves)")
    lst.add_argument("--json", action="store_true")
    revoke = cmds.add_parser("revoke", help="revoke a token by id (effective on its next request)")
    revoke.add_argument("token_id")


def _cli_change() -> Any:
    """Who the audit trail names for a CLI change: the local operator."""
    import getpass
    import time

    from .store.audit import Actor, Change

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Change(Actor("cli", user, "critique-sidecar CLI"), "cli_" + uuid.uuid4().hex[:16], int(time.time() * 1000))


async def _operator_tokens_cmd(args: argparse.Namespace, redis: Any) -> int:
    from .store.operator_tokens import RedisOperatorTokens, token_json

    store = RedisOperatorTokens(redis)
    if args.action == "create":
        token, record = await store.create(args.name, args.scopes, _cli_change())
        out = {**token_json(record), "token": token}
        if args.json:
            print(json.dumps(out))
        else:
            print(f"token_id: {record.token_id}\nname:     {record.name}\nscopes:   {','.join(sorted(record.scopes))}")
            print(f"token:    {token}\n(store it now: it is shown only once)")
        return 0
    if args.action == "list":
        rows = [token_json(t) for t in await store.list()]
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                print(
                    f"{r['token_id']}  {'revoked' if r['revoked'] else 'active':8} {','.join(r['scopes'])}  {r['name']}"
                )
        return 0
    revoked = await store.revoke(args.token_id, _cli_change())
    if revoked is None:
        raise CliError(f"no operator token with id {args.token_id}")
    print(f"revoked {revoked.token_id} ({revoked.name})")
    return 0


async def _with_redis(config: Config, fn: Callable[[Any], Awaitable[int]]) -> int:
    from .app import connect_redis

    redis = connect_redis(config)
    try:
        return await fn(redis)
    finally:
        await redis.aclose()


def _print_controls(controls: Any, as_json: bool) -> None:
    out = controls.to_json()
    if as_json:
        print(json.dumps(out))
    else:
        for name, value in out.items():
            text = "none" if value is None else ",".join(value) if isinstance(value, list) else value
            print(f"{name}: {text}")


async def _keys(args: argparse.Namespace, redis: Any, config: Config) -> int:
    from .core.key_controls import KeyControls
    from .store.key_store import RedisKeyStore, UnknownKey

    store = RedisKeyStore(redis)
    if args.action == "create":
        given = _key_controls_given(args)
        controls = _key_controls(KeyControls(), given, config.catalog_path) if given else None
        new = await _provisioning(redis).create_key(
            _cli_change(), args.account, name=args.name, scopes=tuple(args.scopes), controls=controls
        )
        out = {"key": new.key, "key_id": new.key_id, "account": new.account, "scopes": new.scopes}
        if controls is not None:
            out["controls"] = controls.to_json()
        if args.json:
            print(json.dumps(out))
        else:
            print(f"key_id:  {new.key_id}\naccount: {new.account}\nscopes:  {','.join(new.scopes)}")
            if controls is not None:
                _print_controls(controls, False)
            print(f"key:     {new.key}\n(store it now: it is shown only once)")
        return 0
    if args.action in ("set-limits", "show-limits"):
        given = _key_controls_given(args) if args.action == "set-limits" else {}
        if args.action == "set-limits":
            if not given:
                raise CliError(f"keys set-limits: give at least one of {', '.join(_KEY_CONTROL_FLAGS)}")
            _key_controls(KeyControls(), given, config.catalog_path)  # bad flags fail before Redis
        found = await store.by_id(args.key_id)
        if found is None:
            raise CliError(f"no key with id {args.key_id}")
        try:
            controls = await store.get_controls(found.account, found.key_id)
            if args.action == "set-limits":
                controls = await _provisioning(redis).set_key_controls(
                    _cli_change(), found.account, found.key_id, _key_controls(controls, given, config.catalog_path)
                )
        except UnknownKey as exc:
            raise CliError(str(exc)) from None
        _print_controls(controls, args.json)
        return 0
    if args.action == "list":
        records = await store.list(args.account)
        rows: list[dict[str, Any]] = [
            {
                "key_id": r.key_id,
                "name": r.name,
                "scopes": sorted(r.scopes),
                "created_at": r.created_at,
                "revoked": r.revoked,
                "controls": (await store.controls_of(r.account, r.key_id)).to_json(),  # limits
            }
            for r in records
        ]
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                state = "revoked" if r["revoked"] else "active"
                limits = " ".join(f"{k}={v}" for k, v in r["controls"].items() if v is not None)
                print(f"{r['key_id']}  {state:8} {','.join(r['scopes'])}  {r['name']}  {limits}".rstrip())
        return 0
    found = await store.by_id(args.key_id)
    if found is None:
        raise CliError(f"no key with id {args.key_id}")
    service = _provisioning(redis)
    if args.action == "rotate":
        from .provisioning.schemas import KeyRotate

        rotated = await service.rotate_key(
            _cli_change(), found.account, args.key_id, KeyRotate(grace_seconds=args.grace_seconds)
        )
        if args.json:
            print(rotated.model_dump_json())
        else:
            print(f"key_id:  {rotated.key_id}\nkey:     {rotated.key}\n(store it now: it is shown only once)")
            print(f"the old secret works until {rotated.previous_secret_retires_at}")
        return 0
    view = await service.revoke_key(_cli_change(), found.account, args.key_id)
    print(f"revoked {view.key_id} (account {view.account})")
    return 0


def _provisioning(redis: Any) -> Any:
    from .provisioning.server import provisioning

    return provisioning(Config(), redis)


async def _credits_cmd(args: argparse.Namespace, redis: Any) -> int:
    from .store.accounts import RedisAccounts

    accounts = RedisAccounts(redis)
    if args.action == "grant":
        from decimal import Decimal

        from .provisioning.schemas import CreditChange

        action = "credits.grant" if args.credits >= 0 else "credits.debit"
        if args.credits == 0:
            raise CliError("--credits must not be 0")
        body = CreditChange(credits=Decimal(abs(args.credits)) / 1_000_000)
        idem = args.idempotency_key or "cli_" + uuid.uuid4().hex
        result, replayed = await _provisioning(redis).change_credits(_cli_change(), args.account, action, body, idem)
        note = " (already applied under this idempotency key: nothing changed)" if replayed else ""
        print(f"account {args.account}: balance {result.balance_after} credits{note}")
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


async def _settings_cmd(args: argparse.Namespace, redis: Any) -> int:
    from .core.account_settings import SettingsPatch
    from .core.errors import ApiError
    from .store.settings_store import RedisSettingsStore

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
                {_SETTING_FLAGS[f][0]: _cli_setting(_SETTING_FLAGS[f][0], v) for f, v in given.items()}
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


async def _usage_cmd(args: argparse.Namespace, redis: Any, config: Config) -> int:
    from .store.usage_export import UsageExporter
    from .store.usage_records import rebuild_registry, registered_accounts
    from .store.usage_retention import UsageRetention

    if args.action == "export":
        if args.count < 1:
            raise CliError("--count must be >= 1")
        exporter = UsageExporter(redis, args.account, args.group, args.consumer, min_idle_ms=args.min_idle_ms)
        await exporter.ensure_group(args.start_id)
        deliveries = await exporter.read(args.count)
        for d in deliveries:
            sys.stdout.write(json.dumps({**d.record, "redelivered": d.redelivered}) + "\n")
        sys.stdout.flush()  # printed (and flushed) before acknowledging: at-least-once
        if not args.no_ack:
            await exporter.ack([d.id for d in deliveries])
        return 0
    if args.action == "trim":
        days = args.retention_days if args.retention_days is not None else config.usage_retention_days
        retention = UsageRetention(redis, days, warn_length=config.usage_stream_maxlen)
        results = [await retention.trim(args.account)] if args.account else await retention.trim_all()
        for r in results:
            row = {
                "account": r.account,
                "deleted": r.deleted,
                "kept_from": r.min_id,
                "held_by_group": r.held_by,
                "length": r.length,
            }
            print(json.dumps(row) if args.json else " ".join(f"{k}={v}" for k, v in row.items()))
        return 0
    if args.action == "push":
        return await _usage_push(args, redis, config)
    for account in await rebuild_registry(redis) if args.rebuild else await registered_accounts(redis):
        print(account)
    return 0


async def _usage_push(args: argparse.Namespace, redis: Any, config: Config) -> int:
    from .workers.usage_push import UsagePushWorker

    if args.url:
        config = config.model_copy(update={"usage_push_url": args.url})
    if not config.usage_push_url:
        raise CliError("usage push: give --url or set CRITIQUE_USAGE_PUSH_URL")
    worker = UsagePushWorker(redis, config)
    if not args.once:
        await worker.run_forever()
        return 0
    try:
        while await worker.push_once():
            pass
    finally:
        await worker.client.aclose()
    print(json.dumps({"pushed": worker.pushed}))
    return 0


async def _notify_worker(args: argparse.Namespace, redis: Any, config: Config) -> int:
    from .workers.notify import NotifyWorker

    worker = NotifyWorker(redis, config)
    if not args.once:
        await worker.run_forever(wake_channel=not config.redis_cluster)
        return 0
    try:
        await worker.poll(pending=True)
        while await worker.poll() or worker._inflight:
            await worker.drain()
    finally:
        await worker.client.aclose()
    print(json.dumps({"delivered": worker.delivered, "dead_lettered": worker.dead}))
    return 0


async def _notify_cmd(args: argparse.Namespace, redis: Any) -> int:
    from .store.notify_outbox import dead_letters

    if args.count < 1:
        raise CliError("--count must be >= 1")
    for entry in await dead_letters(redis, args.count):
        if args.json:
            print(json.dumps(entry))
        else:
            e = entry["event"]
            print(
                f"{e['id']} account={entry['account']} kind={e['kind']} attempts={entry['attempts']} "
                f"error={entry['last_error']!r} dead_at_ms={entry['dead_at_ms']}"
            )
    return 0


def _envoy_options(args: argparse.Namespace) -> Any:
    from .envoy.config import EnvoyOptions, SidecarTls

    tls = None
    if args.sidecar_tls_ca:
        tls = SidecarTls(args.sidecar_tls_ca, args.sidecar_tls_cert, args.sidecar_tls_key, args.sidecar_tls_sni)
    elif args.sidecar_tls_cert or args.sidecar_tls_key or args.sidecar_tls_sni:
        raise CliError("--sidecar-tls-cert/-key/-sni need --sidecar-tls-ca")
    extra = {}
    if args.command == "envoy-config":
        extra = {
            "listen": args.listen,
            "admin": args.admin,
            "stat_prefix": args.stat_prefix,
            "virtual_host": args.virtual_host,
        }
    return EnvoyOptions(
        sidecar_grpc=tuple(args.sidecar_grpc or ["127.0.0.1:9001"]),
        sidecar_http=args.sidecar_http,
        chat_auth=args.chat_auth,
        sidecar_tls=tls,
        path_prefix=args.path_prefix,
        **extra,
    )


def _envoy_config(args: argparse.Namespace, config: Config) -> int:
    from .core.catalog import load_catalog
    from .envoy.config import render, render_fragment

    opts = _envoy_options(args)
    catalog = load_catalog(config.catalog_path)
    sys.stdout.write(render_fragment(catalog, opts) if args.fragment else render(catalog, opts))
    return 0


def _envoy_merge(args: argparse.Namespace, config: Config) -> int:
    from .core.catalog import load_catalog
    from .envoy.config import build_fragment, read_bootstrap, to_yaml
    from .envoy.merge import merge

    opts = _envoy_options(args)  # bad options first: they need no file
    try:
        existing = read_bootstrap(args.bootstrap)
    except OSError as exc:
        raise CliError(f"cannot read {args.bootstrap}: {exc.strerror}") from None
    fragment = build_fragment(load_catalog(config.catalog_path), opts)
    sys.stdout.write(to_yaml(merge(existing, fragment, args.listener, args.virtual_host)))
    return 0


# Commands that talk to Redis: beside a running `make run` stack they use its Redis.
_REDIS_COMMANDS = ("keys", "credits", "settings", "usage")


def _operator_config(command: str) -> Config:
    """Config from the environment; with CRITIQUE_REDIS_URL unset, an operator command run
    beside a `make run` stack (its `.run/stack.json`) uses that stack's Redis, and says so."""
    if command in _REDIS_COMMANDS and "CRITIQUE_REDIS_URL" not in os.environ:
        from .devtools.stack_file import running_stack

        stack = running_stack()
        if stack is not None:
            print(
                f"critique-sidecar: using the local stack's Redis {stack['redis_url']} (.run/stack.json)",
                file=sys.stderr,
            )
            return Config(redis_url=stack["redis_url"])
    return Config()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _operator_config(args.command)
        configure_logging(config.log_level, config.log_format)
        if args.command == "serve":
            import uvloop

            from .envoy.server import serve

            uvloop.run(serve(config))
            return 0
        if args.command == "gateway":
            import uvloop

            from .asgi.gateway import serve as serve_gateway

            uvloop.run(serve_gateway(config, args.listen or config.gateway_listen))
            return 0
        if args.command == "config-table":
            from .config_doc import config_table

            print(config_table())
            return 0
        if args.command == "envoy-config":
            return _envoy_config(args, config)
        if args.command == "envoy-merge":
            return _envoy_merge(args, config)
        if args.command == "usage":
            return asyncio.run(_with_redis(config, lambda redis: _usage_cmd(args, redis, config)))
        if args.command == "keys":
            return asyncio.run(_with_redis(config, lambda redis: _keys(args, redis, config)))
        if args.command == "notify-worker":
            return asyncio.run(_with_redis(config, lambda redis: _notify_worker(args, redis, config)))
        handler = {
            "credits": _credits_cmd,
            "settings": _settings_cmd,
            "notify": _notify_cmd,
            "operator-tokens": _operator_tokens_cmd,
        }[args.command]
        return asyncio.run(_with_redis(config, lambda redis: handler(args, redis)))
    except (CliError, CatalogError, ValueError) as exc:
        print(f"critique-sidecar: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(
            f"critique-sidecar: error: bad configuration: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}",
            file=sys.stderr,
        )
        return 2
    except StoreUnavailable as exc:
        print(f"critique-sidecar: error: Redis is unreachable ({exc.detail})", file=sys.stderr)
        return 1
    except ApiError as exc:  # the provisioning service's refusals (same text as the API's)
        print(f"critique-sidecar: error: {exc.message}", file=sys.stderr)
        return 2
    except (RedisError, RedisClusterException) as exc:  # from commands that go to Redis directly
        print(f"critique-sidecar: error: Redis at {_redis_where(config)}: {_one_line(exc)}", file=sys.stderr)
        return 1


# --- one-line Redis errors for the operator commands ----------------------------------------


def _redis_where(config: Config) -> str:
    """host:port of the configured Redis, never its password."""
    url = urlsplit(config.redis_url)
    return f"{url.hostname}:{url.port or 6379}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (RedisConnectionError, RedisTimeoutError)) else f"{type(exc).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
