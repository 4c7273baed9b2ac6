"""`critique-sidecar`: serve, and the operator commands for keys and the shared credit pool.

parser.py is the command line; run.py runs a command and maps its failures to exit statuses;
one module per command group holds the handlers (keys, accounts: credits and settings, usage,
notify, operators, envoy), common.py what they share."""

from .common import CliError
from .parser import build_parser
from .run import main

__all__ = ["CliError", "build_parser", "main"]
