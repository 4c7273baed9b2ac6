"""`operator-tokens`: the provisioning API's credentials."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import CliError, _cli_change


async def _operator_tokens_cmd(args: argparse.Namespace, redis: Any) -> int:
    from ..store.operator_tokens import RedisOperatorTokens, token_json

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
