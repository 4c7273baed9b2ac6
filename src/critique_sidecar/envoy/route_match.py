"""Whether an Envoy route's match could take a request for a given path, as Envoy decides it.

Covers every path matcher of Envoy 1.40's RouteMatch: `prefix`, `path`, `path_separated_prefix`
(each honouring `case_sensitive`), `safe_regex` (RE2, as Envoy runs it, on the path without its
query string), URI templates (`path_match_policy`) and `connect_matcher` (CONNECT requests,
never a product path). The other conditions (headers, query parameters, gRPC, TLS, runtime
fraction, metadata) only narrow which requests a route takes, so they are not consulted: a route
that takes a product path for some requests takes it. A matcher this module does not know is
`Undecidable`, and the caller refuses rather than guess."""

from __future__ import annotations

import re
from typing import Any

import re2

URI_TEMPLATE = "envoy.path.match.uri_template.uri_template_matcher"
URI_TEMPLATE_TYPE = "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig"
# A path segment character in a URI template's globs (RFC 3986 pchar without '*' and '=').
_PCHAR = r"[a-zA-Z0-9\-._~%!$&'()+,;:@]"
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad regex is reported by us, not written to stderr


class Undecidable(ValueError):
    """The match cannot be read (an unknown matcher, a regex RE2 refuses)."""


def _template_regex(template: str) -> str:
    """A URI template (`/api/{version}/models`, `/v1/**`, `/{name=files/*}.txt`) as a regex."""
    out = []
    for token in re.findall(r"\{[^}]*\}|\*\*|\*|[^*{]+", template):
        if token == "**":
            out.append(f"(?:{_PCHAR}|/)*")
        elif token == "*":
            out.append(f"{_PCHAR}+")
        elif token.startswith("{"):
            _, _, pattern = token[1:-1].partition("=")
            out.append(_template_regex(pattern) if pattern else f"{_PCHAR}+")
        else:
            out.append(re.escape(token))
    return "".join(out)


def _regex(match: dict[str, Any]) -> str | None:
    if "safe_regex" in match:
        return str((match["safe_regex"] or {}).get("regex", ""))
    policy = match.get("path_match_policy")
    if policy is not None:
        config = policy.get("typed_config") or {}
        if policy.get("name") != URI_TEMPLATE and config.get("@type") != URI_TEMPLATE_TYPE:
            raise Undecidable(f"path_match_policy {policy.get('name')!r} is not one the merge can read")
        return _template_regex(str(config.get("path_template", "")))
    return None


def captures(match: dict[str, Any], path: str) -> bool:
    """Could a route with this match take a request for `path` (no query string)?"""
    if "connect_matcher" in match:
        return False
    regex = _regex(match)
    if regex is not None:
        try:
            return re2.compile(regex, _RE2_OPTIONS).fullmatch(path) is not None
        except re2.error as exc:
            raise Undecidable(f"regex {regex!r} ({exc})") from None
    folded = match.get("case_sensitive") is False

    def fold(text: Any) -> str:
        return str(text).lower() if folded else str(text)

    if "path" in match:
        return fold(path) == fold(match["path"])
    if "prefix" in match:
        return fold(path).startswith(fold(match["prefix"]))
    if "path_separated_prefix" in match:
        p = fold(match["path_separated_prefix"])
        return fold(path) == p or fold(path).startswith(p + "/")
    raise Undecidable(f"no path matcher Envoy 1.40 has ({', '.join(sorted(match)) or 'empty match'})")
