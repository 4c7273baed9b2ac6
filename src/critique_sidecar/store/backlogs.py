"""What is waiting in Redis for a worker: budget notifications given up on (the dead-letter
list) and usage records the push worker has not had acknowledged yet (per account stream:
never delivered to its consumer group, plus delivered and not acknowledged)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from . import keyspace as ks
from .usage_records import as_text, registered_accounts


async def dead_letters(redis: Any) -> int:
    return int(await redis.llen(ks.NOTIFY_DEAD))


def _field(group: dict[Any, Any], name: str) -> Any:
    return group.get(name, group.get(name.encode()))


async def push_backlog(redis: Any, group: str) -> int:
    """Usage records not yet acknowledged by consumer group `group`, over every account."""
    total = 0
    for account in await registered_accounts(redis):
        stream = ks.usage_stream(account)
        try:
            groups = await redis.xinfo_groups(stream)
        except ResponseError:  # no stream yet: nothing waiting
            continue
        mine = [g for g in groups if as_text(_field(g, "name")) == group] if groups else []
        if not mine:  # the group is not made yet: every record waits
            total += int(await redis.xlen(stream))
            continue
        lag = _field(mine[0], "lag")
        # Redis cannot always tell the lag (after entries were deleted): count the whole stream.
        waiting = int(lag) if lag is not None else int(await redis.xlen(stream))
        total += waiting + int(_field(mine[0], "pending") or 0)
    return total
