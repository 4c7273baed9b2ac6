"""`keys`: create, list, revoke and rotate API keys, and their per-key controls."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from ..config import Config
from ..core.limit_table import KEY_LIMITS
from .accounts import limit_flags
from .common import CliError, _cli_change, _provisioning

# flag -> (KeyControls JSON field, metavar, help). Values go through KeyControls.patched.
_KEY_CONTROL_FLAGS = {
    "--expires-at": ("expires_at", "TIME|none", "expiry: 2026-12-31T00:00:00Z or 2026-12-31 (UTC); none: never"),
    "--models": ("models", "M1,M2|none", "the only models the key may use; none: every model"),
    **limit_flags(KEY_LIMITS),
}
_CREDIT_FIELDS = {row.name for row in KEY_LIMITS if row.credits}


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
        elif field == "expires_at" or field in _CREDIT_FIELDS:
            given[field] = text.strip()
        else:
            given[field] = int(low) if re.fullmatch(r"-?[0-9]+", low) else text.strip()
    return given


def _key_controls(current: Any, given: dict[str, object], catalog_path: Any) -> Any:
    from ..core.catalog import load_catalog
    from ..core.errors import ApiError

    known = {m.id for m in load_catalog(catalog_path).models}
    try:
        return current.patched(given, known_models=known)
    except ApiError as exc:
        flag = next((f for f, (field, _, _) in _KEY_CONTROL_FLAGS.items() if field == exc.param), None)
        raise CliError(f"{flag}: {exc.message}" if flag else exc.message) from None


def _print_controls(controls: Any, as_json: bool) -> None:
    out = controls.to_json()
    if as_json:
        print(json.dumps(out))
    else:
        for name, value in out.items():
            text = "none" if value is None else ",".join(value) if isinstance(value, list) else value
            print(f"{name}: {text}")


async def _keys(args: argparse.Namespace, redis: Any, config: Config) -> int:
    from ..core.key_controls import KeyControls
    from ..store.key_store import RedisKeyStore, UnknownKey

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
                "controls": (await store.controls_of(r.account, r.key_id)).to_json(),
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
        from ..provisioning.schemas import KeyRotate

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
