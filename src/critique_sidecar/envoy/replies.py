"""Envoy's own answers on the product's routes, kept as the product's own stack gives them
inside any operator's HTTP connection manager.

Two things there reshape or hide them:
- Local-reply settings (their mappers, a global `body_format`) rewrite every reply Envoy makes.
  The product's mappers go first, and the last of them (`claim`) takes every other local reply
  on the product's routes and leaves it as it is, so theirs never apply there.
- A route that answers by itself (`direct_response`) has no route entry: the CORS filter skips
  it, and a filter's reply made before the router gets no route headers. `answered_by_mappers`
  makes each such product route a real route to a cluster with no hosts, and its answer a
  mapper for that route's requests (Envoy answers 503 "no healthy upstream", flag UH, at once).

Every mapper is found again by its status filter's runtime key (merge.py replaces them)."""

from __future__ import annotations

import copy
import re
from typing import Any

# Mappers carry this at the start of their status filter's runtime key (merge.py finds them).
RUNTIME_KEY = "critique.local_reply."
# A cluster without hosts: the product's self-answering routes point at it.
NO_HOSTS_CLUSTER = "critique_local_reply"


def no_hosts_cluster() -> dict[str, Any]:
    return {
        "name": NO_HOSTS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": NO_HOSTS_CLUSTER},
    }


def status_filter(status: int, key: str, op: str = "EQ") -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {"op": op, "value": {"default_value": status, "runtime_key": key}}}}


def _path_regex(match: dict[str, Any]) -> str:
    """The request's :path (query string included) as a route's path matcher sees it."""
    if "path" in match:
        return re.escape(str(match["path"])) + r"(\?.*)?"
    if "prefix" in match:
        return re.escape(str(match["prefix"])) + ".*"
    raise ValueError(f"a product route matches by path or prefix only, not {sorted(match)}")


def path_filter(routes: list[dict[str, Any]]) -> dict[str, Any]:
    """A request to one of these routes' paths (their other conditions aside)."""
    # One small regex per path: RE2 refuses programs past size 100 by default.
    regexes = dict.fromkeys(_path_regex(r["match"]) for r in routes)
    filters = [
        {"header_filter": {"header": {"name": ":path", "string_match": {"safe_regex": {"regex": rx}}}}}
        for rx in regexes
    ]
    return filters[0] if len(filters) == 1 else {"or_filter": {"filters": filters}}  # an or_filter takes two or more


def _route_filter(match: dict[str, Any]) -> dict[str, Any]:
    """A request this route matches: its path and its header conditions."""
    one_path = {"header": {"name": ":path", "string_match": {"safe_regex": {"regex": _path_regex(match)}}}}
    filters = [{"header_filter": one_path}]
    filters += [{"header_filter": {"header": copy.deepcopy(h)}} for h in match.get("headers", [])]
    return filters[0] if len(filters) == 1 else {"and_filter": {"filters": filters}}


def answered_by_mappers(routes: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The routes with every direct_response replaced by the no-hosts cluster, and the mappers
    that give those routes' answers (in route order, so the first that matches is the route's)."""
    out, mappers = [], []
    for route in routes:
        reply = route.get("direct_response")
        if reply is None:
            out.append(route)
            continue
        routed = {k: v for k, v in route.items() if k != "direct_response"}
        routed["route"] = {"cluster": NO_HOSTS_CLUSTER}
        out.append(routed)
        headers = {h["header"]["key"].lower(): h["header"]["value"] for h in route.get("response_headers_to_add", [])}
        mapper: dict[str, Any] = {
            "filter": {
                "and_filter": {
                    "filters": [
                        status_filter(503, RUNTIME_KEY + "route"),
                        {"response_flag_filter": {"flags": ["UH"]}},
                        _route_filter(route["match"]),
                    ]
                }
            },
            "status_code": reply["status"],
            "body_format_override": {
                "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                "content_type": headers.get("content-type", "text/plain"),
            },
        }
        if "body" in reply:
            mapper["body"] = copy.deepcopy(reply["body"])
        mappers.append(mapper)
    return out, mappers


def claim(scope: dict[str, Any]) -> dict[str, Any]:
    """Every local reply in `scope`, left as Envoy made it (the body as is; the content type
    the reply set, else text/plain): what a listener with no local-reply settings answers."""
    return {
        "filter": {"and_filter": {"filters": [status_filter(0, RUNTIME_KEY + "any", op="GE"), scope]}},
        "body_format_override": {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"}},
    }


def is_ours(mapper: dict[str, Any]) -> bool:
    filt = mapper.get("filter", {})
    for f in [filt, *filt.get("and_filter", {}).get("filters", [])]:
        key = f.get("status_code_filter", {}).get("comparison", {}).get("value", {}).get("runtime_key", "")
        if str(key).startswith(RUNTIME_KEY):
            return True
    return False
