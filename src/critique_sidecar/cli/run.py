"""`main`: run the chosen command, and turn its failures into one line and an exit status
(2: the operator's input or configuration, 1: Redis unreachable or failing)."""

from __future__ import annotations

import asyncio
import os
import sys
from urllib.parse import urlsplit

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..config import Config
from ..core.catalog import CatalogError
from ..core.errors import ApiError, StoreUnavailable
from ..listen_check import ListenTaken, check_listen_free
from ..observability.logs import configure_logging
from . import end_users
from .accounts import _credits_cmd, _settings_cmd
from .common import CliError, _with_redis
from .envoy import _envoy_config, _envoy_merge
from .keys import _keys
from .notify import _notify_cmd, _notify_worker
from .operators import _operator_tokens_cmd
from .parser import build_parser
from .usage import _usage_cmd

# Commands that talk to Redis: beside a running `make run` stack they use its Redis. (The
# servers, `serve` and `gateway`, take theirs from the environment only.)
REDIS_COMMANDS = ("keys", "credits", "settings", "end-users", "usage", "notify", "notify-worker", "operator-tokens")


# Long-running servers: in json log mode everything they write to stderr is JSON.
SERVERS = ("serve", "gateway", "notify-worker")


def config_errors(exc: ValidationError) -> str:
    """Each problem named by its environment variable (CRITIQUE_HOLD_TTL_S), not the field."""
    parts = []
    for error in exc.errors():
        msg = str(error["msg"]).removeprefix("Value error, ")
        loc = error.get("loc") or ()
        parts.append(f"CRITIQUE_{str(loc[0]).upper()}: {msg}" if loc else msg)
    return "; ".join(parts)


def _operator_config(command: str) -> Config:
    """Config from the environment; with CRITIQUE_REDIS_URL unset, an operator command run
    beside a `make run` stack (its `.run/stack.json`) uses that stack's Redis, and says so."""
    if command in REDIS_COMMANDS and "CRITIQUE_REDIS_URL" not in os.environ:
        from ..devtools.stack_file import running_stack

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
        log_handler = configure_logging(config.log_level, config.log_format)
        if args.command in SERVERS and config.log_format == "json":
            from ..observability.native_stderr import to_json_lines

            to_json_lines(log_handler)  # gRPC core's lines and any traceback as JSON too
        if args.command == "serve":
            import uvloop

            from ..envoy.server import serve

            check_listen_free(config, ("grpc_listen", "http_listen", "metrics_listen", "admin_listen"))
            uvloop.run(serve(config))
            return 0
        if args.command == "gateway":
            import uvloop

            from ..asgi.gateway import serve as serve_gateway

            listen = args.listen or config.gateway_listen
            check_listen_free(config, ("gateway_metrics_listen", "admin_listen"), extra=listen)
            uvloop.run(serve_gateway(config, listen))
            return 0
        if args.command == "config-table":
            from ..config_doc import config_table

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
        if args.command == "settings":
            return asyncio.run(_with_redis(config, lambda redis: _settings_cmd(args, redis, config)))
        handler = {
            "end-users": end_users.run,
            "credits": _credits_cmd,
            "notify": _notify_cmd,
            "operator-tokens": _operator_tokens_cmd,
        }[args.command]
        return asyncio.run(_with_redis(config, lambda redis: handler(args, redis)))
    except ListenTaken as exc:
        print(f"critique-sidecar: error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        print(f"critique-sidecar: error: bad configuration: {config_errors(exc)}", file=sys.stderr)
        return 2
    except (CliError, CatalogError, ValueError) as exc:
        print(f"critique-sidecar: error: {exc}", file=sys.stderr)
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


def _redis_where(config: Config) -> str:
    """host:port of the configured Redis, never its password."""
    url = urlsplit(config.redis_url)
    return f"{url.hostname}:{url.port or 6379}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (RedisConnectionError, RedisTimeoutError)) else f"{type(exc).__name__}: {text}"
