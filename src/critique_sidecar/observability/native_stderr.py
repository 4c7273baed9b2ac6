"""Everything a serving process writes to stderr, as JSON lines (json log mode).

Native libraries (gRPC core, absl) and the interpreter itself (an uncaught exception's
traceback) write plain text to file descriptor 2, past Python's logging. `to_json_lines` points
descriptor 2 at a pipe and hands the log handler the real stderr; a thread turns each line read
from the pipe into one JSON object (`logger` "grpc" for gRPC core's own lines, with their level;
"stderr" otherwise). At exit the pipe is drained before the process ends."""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import time
from typing import Any

import orjson

# gRPC core (absl) lines: "E1207 16:48:33.309039   22347 add_port.cc:83] Failed to add port ..."
_ABSL = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ ([^\]\s]+)\] ?(.*)$")
_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}


def json_line(text: str) -> bytes:
    from .logs import _json_line

    found = _ABSL.match(text)
    if found:
        level, source, msg = found.groups()
        line = _json_line(time.time(), _LEVELS[level], "grpc", msg, {"source": source})
    else:
        level = "WARNING" if text.startswith("WARNING") else "ERROR"
        line = _json_line(time.time(), level, "stderr", text, {})
    return orjson.dumps(line) + b"\n"


def _pump(read_fd: int, out: Any, lock: Any) -> None:
    with os.fdopen(read_fd, "rb") as pipe:
        for raw in pipe:
            text = raw.decode("utf-8", "backslashreplace").rstrip("\r\n")
            if not text.strip():
                continue
            data = raw if text.startswith('{"ts":') else json_line(text)  # already one of ours
            with lock:
                out.write(data if data.endswith(b"\n") else data + b"\n")
                out.flush()


def to_json_lines(handler: logging.StreamHandler[Any]) -> None:
    """Send `handler`'s records to the real stderr and every other stderr line through the pipe."""
    sys.stderr.flush()
    real = os.dup(2)
    out = os.fdopen(os.dup(real), "wb", buffering=0)
    handler.setStream(os.fdopen(real, "w", buffering=1, encoding="utf-8", errors="backslashreplace"))
    lock = handler.lock  # one line at a time with the handler's own writes
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, out, lock), name="stderr-json", daemon=True)
    pump.start()

    def drain() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the pump reads to the end, then stops
        pump.join(timeout=5)

    atexit.register(drain)
