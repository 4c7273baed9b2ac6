"""`.run/stack.json`: how the operator CLI finds the Redis of a running `make run` stack, so
its commands never land in another Redis (e.g. the machine's default on port 6379)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

NAME = "stack.json"


def write(workdir: Path, redis_url: str, ports: dict[str, int]) -> Path:
    path = workdir / NAME
    path.write_text(json.dumps({"pid": os.getpid(), "redis_url": redis_url, "ports": ports}))
    return path


def remove(workdir: Path) -> None:
    (workdir / NAME).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stack(cwd: Path | None = None) -> dict[str, Any] | None:
    """The running local stack started from `cwd` (or its parents), if any; a file left by a
    stack that is gone is ignored."""
    here = (cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        path = folder / ".run" / NAME
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("redis_url"), str) and _alive(int(data["pid"])):
                return data
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None
    return None
