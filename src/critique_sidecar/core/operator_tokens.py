"""Operator tokens: the credentials of the provisioning API (never of the public API).

`crtop_` + 32 base62 random characters + the same 6-character CRC32 checksum as customer keys
(so scanners and typos are caught the same way). Only the SHA-256 is stored. Each token has
scopes naming the API areas it may use; creating, listing and revoking tokens is CLI-only, so
a leaked token can never mint more tokens."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .keys import _INDEX, ALPHABET, BODY_LEN, CHECKSUM_LEN, _checksum

PREFIX = "crtop_"
TOKEN_LEN = len(PREFIX) + BODY_LEN + CHECKSUM_LEN

KEYS = "keys"
CREDITS = "credits"
SETTINGS = "settings"
USAGE = "usage"
AUDIT = "audit"
OPERATOR_SCOPES = (KEYS, CREDITS, SETTINGS, USAGE, AUDIT)


@dataclass(frozen=True, slots=True)
class OperatorToken:
    """What the store knows about one token (never the token itself)."""

    token_id: str
    token_hash: str
    name: str
    scopes: frozenset[str]
    created_at: int = 0  # unix seconds
    revoked: bool = False


def generate_token() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LEN))
    return PREFIX + body + _checksum(body)


def new_token_id() -> str:
    return "op_" + secrets.token_hex(6)


def is_well_formed(token: str) -> bool:
    if len(token) != TOKEN_LEN or not token.startswith(PREFIX):
        return False
    rest = token[len(PREFIX) :]
    if any(c not in _INDEX for c in rest):
        return False
    return secrets.compare_digest(rest[-CHECKSUM_LEN:], _checksum(rest[:BODY_LEN]))


def parse_operator_scopes(text: str) -> tuple[str, ...]:
    """'keys,credits' -> ('keys', 'credits'); 'all' -> every scope."""
    if text.strip() == "all":
        return OPERATOR_SCOPES
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    unknown = [s for s in scopes if s not in OPERATOR_SCOPES]
    if unknown:
        raise ValueError(f"unknown operator scope(s): {', '.join(unknown)}; known: {', '.join(OPERATOR_SCOPES)}, all")
    if not scopes:
        raise ValueError("at least one operator scope is required")
    return scopes
