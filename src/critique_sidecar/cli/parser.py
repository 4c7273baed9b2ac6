"""The command line: every command, its arguments, and one-line errors for bad arguments."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn, TypeAlias

from ..core.money import parse_credits
from ..core.scopes import DEFAULT_KEY_SCOPES, parse_scopes
from ..core.wire import MAX_RESPONSE_BODY_BYTES
from . import end_users
from .accounts import _SETTING_FLAGS
from .keys import _add_key_control_flags

DESCRIPTION = "`critique-sidecar`: serve, and the operator commands for keys and the shared credit pool."


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
    p.add_argument(
        "--max-response-bytes",
        type=int,
        default=MAX_RESPONSE_BODY_BYTES,
        help="largest JSON response metered (Envoy buffers it whole; keep it equal to CRITIQUE_MAX_RESPONSE_BYTES)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="critique-sidecar", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_serving_commands, _envoy_config_command, _keys_commands, _credits_commands, _settings_commands,
                end_users.add_commands, _usage_commands, _notify_commands, _operator_token_parser):  # fmt: skip
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
    merge.add_argument(
        "--listener",
        metavar="NAME|IP:PORT",
        help="the listener to add the product to, by name or by address (needed when there are several)",
    )
    merge.add_argument("--virtual-host", help="the virtual host to add the routes to (needed when there are several)")
    _envoy_path_prefix_option(merge)
    _envoy_product_options(merge)


CATALOG_HELP = (
    "model catalog TOML the model routes and clusters come from (default: CRITIQUE_CATALOG_PATH; "
    "unset: the built-in catalog, whose model servers are at 127.0.0.1:8100)"
)


def _envoy_path_prefix_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", metavar="FILE", help=CATALOG_HELP)
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
    grant.add_argument("--category", choices=("paid", "promotional"), help="the grant's category (default paid)")
    grant.add_argument("--effective-at", help="RFC 3339 UTC time the credits join the balance (default now)")
    grant.add_argument("--expires-at", help="RFC 3339 UTC time what is left of the grant expires (default never)")
    grant.add_argument("--priority", type=int, help="0-100, lower spends first (default 50)")
    show = credits.add_parser("show", help="balance and open holds")
    show.add_argument("--account", required=True)
    show.add_argument("--json", action="store_true")
    grants = credits.add_parser("grants", help="the account's live grants in spend order, with what expires when")
    grants.add_argument("--account", required=True)
    grants.add_argument("--json", action="store_true")


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
    # -- usage push
    push = usage_cmds.add_parser("push", help="push usage records as CloudEvents batches to CRITIQUE_USAGE_PUSH_URL")
    push.add_argument("--url", help="endpoint (default: CRITIQUE_USAGE_PUSH_URL)")
    push.add_argument("--once", action="store_true", help="push until nothing is left, then exit")


def _notify_commands(sub: Commands) -> None:  # budget notifications
    nworker = sub.add_parser("notify-worker", help="deliver budget notifications to the accounts' webhooks")
    nworker.add_argument("--once", action="store_true", help="deliver what is queued (with retries), then exit")
    notify = sub.add_parser("notify", help="budget notifications").add_subparsers(dest="action", required=True)
    dead = notify.add_parser("dead-letters", help="notifications that could not be delivered (newest first)")
    dead.add_argument("--count", type=int, default=50)
    dead.add_argument("--json", action="store_true")


def _operator_token_parser(sub: Any) -> None:
    from ..core.operator_tokens import OPERATOR_SCOPES

    def scopes(text: str) -> tuple[str, ...]:
        from ..core.operator_tokens import parse_operator_scopes

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
