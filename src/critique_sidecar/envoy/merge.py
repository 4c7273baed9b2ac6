"""Insert the product into an existing Envoy bootstrap (`critique-sidecar envoy-merge`).

Into one HTTP connection manager (one listener, one virtual host) it adds the product's filters
right before the router, the product's routes first in the virtual host, its scoped local-reply
mappers first, and its clusters. Everything else stays as written. What an earlier merge added
is recognised (filter names, route names, a cluster marker) and replaced, so merging twice gives
the same result. Ambiguous targets and existing routes at the product's paths are refused."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from .config import (
    BUFFER,
    EXT_AUTHZ,
    EXT_PROC,
    LOCAL_REPLY_RUNTIME_KEY,
    ROUTE_PREFIX,
    ROUTER,
)
from .options import EnvoyOptionError

HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
OUR_FILTERS = (EXT_AUTHZ, BUFFER, EXT_PROC)
# Clusters the merge added carry this marker, so a later merge replaces them and never a
# cluster of yours that happens to share a name.
MARKER = {"filter_metadata": {"critique": {"added_by": "critique-sidecar envoy-merge"}}}
# A path no real route is written for: a route that captures it too is a catch-all (`/`,
# `.*`), which the product's exact-path routes, placed first, take precedence over.
_PROBE = "/critique-merge-probe/x"


def read_bootstrap(path: str) -> dict[str, Any]:
    """An existing Envoy bootstrap (YAML or JSON); EnvoyOptionError when it is not one."""
    with open(path, encoding="utf-8") as f:
        try:
            doc = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise EnvoyOptionError(f"{path} is not YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise EnvoyOptionError(f"{path} is not an Envoy bootstrap (a mapping)")
    return doc


class MergeError(ValueError):
    """The bootstrap cannot take the product as asked; the message says what to change."""


def merge(
    existing: dict[str, Any], fragment: dict[str, Any], listener: str | None = None, virtual_host: str | None = None
) -> dict[str, Any]:
    config = copy.deepcopy(existing)
    resources = config.get("static_resources")
    if not isinstance(resources, dict):
        raise MergeError("the bootstrap has no static_resources (listeners and clusters from xDS are not merged)")
    hcm = _connection_manager(_listener(resources.get("listeners") or [], listener))
    vhost = _virtual_host(hcm, virtual_host)

    hcm["http_filters"] = _with_filters(hcm.get("http_filters") or [], fragment["http_filters"])
    routes = [r for r in vhost.get("routes") or [] if not str(r.get("name", "")).startswith(ROUTE_PREFIX)]
    # The paths clients reach the product at (under --path-prefix, if any), and the prefixes it
    # claims whole (nothing under its API reaches a model server but a metered endpoint).
    paths = list(dict.fromkeys(r["match"]["path"] for r in fragment["routes"] if "path" in r["match"]))
    claimed = list(dict.fromkeys(r["match"]["prefix"] for r in fragment["routes"] if "prefix" in r["match"]))
    _refuse_conflicts(routes, paths, claimed, vhost.get("name", "?"))
    vhost["routes"] = [*copy.deepcopy(fragment["routes"]), *routes]
    reply = hcm.setdefault("local_reply_config", {})
    theirs = [m for m in reply.get("mappers") or [] if not _is_ours(m)]
    reply["mappers"] = [*copy.deepcopy(fragment["local_reply_mappers"]), *theirs]

    ours = {c["name"] for c in fragment["clusters"]}
    kept = []
    for c in resources.get("clusters") or []:
        if c.get("metadata") == MARKER:
            continue
        if c.get("name") in ours:
            raise MergeError(f"a cluster named {c['name']!r} already exists: rename it (the product needs that name)")
        kept.append(c)
    resources["clusters"] = kept + [{**copy.deepcopy(c), "metadata": MARKER} for c in fragment["clusters"]]
    return config


def _listener(listeners: list[dict[str, Any]], name: str | None) -> dict[str, Any]:
    if name is not None:
        found = [lst for lst in listeners if lst.get("name") == name]
        if not found:
            raise MergeError(f"no listener named {name!r}; listeners: {_names(listeners)}")
        return found[0]
    http = [lst for lst in listeners if _hcms(lst)]
    if len(http) != 1:
        what = "no listener with an HTTP connection manager" if not http else "several HTTP listeners"
        raise MergeError(f"{what} ({_names(http or listeners)}): choose one with --listener NAME")
    return http[0]


def _hcms(listener: dict[str, Any]) -> list[dict[str, Any]]:
    chains = list(listener.get("filter_chains") or [])
    if listener.get("default_filter_chain"):
        chains.append(listener["default_filter_chain"])
    return [
        f["typed_config"]
        for chain in chains
        for f in chain.get("filters") or []
        if f.get("name") == HCM or f.get("typed_config", {}).get("@type") == HCM_TYPE
    ]


def _connection_manager(listener: dict[str, Any]) -> dict[str, Any]:
    hcms = _hcms(listener)
    name = listener.get("name", "?")
    if len(hcms) != 1:
        raise MergeError(
            f"listener {name!r} has {len(hcms)} HTTP connection managers; the merge needs exactly one "
            "(merge into a listener with one filter chain, or add the fragment by hand)"
        )
    if "route_config" not in hcms[0]:
        raise MergeError(
            f"listener {name!r} takes its routes from RDS: add the fragment's routes on your control plane"
        )
    return hcms[0]


def _virtual_host(hcm: dict[str, Any], name: str | None) -> dict[str, Any]:
    vhosts = hcm["route_config"].get("virtual_hosts") or []
    if name is not None:
        found = [v for v in vhosts if v.get("name") == name]
        if not found:
            raise MergeError(f"no virtual host named {name!r}; virtual hosts: {_names(vhosts)}")
        vhosts = found
    elif len(vhosts) != 1:
        raise MergeError(f"{len(vhosts)} virtual hosts ({_names(vhosts)}): choose one with --virtual-host NAME")
    vhost: dict[str, Any] = vhosts[0]
    return vhost


def _names(items: list[dict[str, Any]]) -> str:
    return ", ".join(repr(i.get("name", "?")) for i in items) or "none"


def _with_filters(filters: list[dict[str, Any]], ours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept = [f for f in filters if f.get("name") not in OUR_FILTERS]
    routers = [
        i
        for i, f in enumerate(kept)
        if f.get("name") == ROUTER or f.get("typed_config", {}).get("@type") == ROUTER_TYPE
    ]
    if not routers:
        raise MergeError("the HTTP connection manager has no router filter to insert the product's filters before")
    at = routers[0]
    return [*kept[:at], *copy.deepcopy(ours), *kept[at:]]


def _is_ours(mapper: dict[str, Any]) -> bool:
    # By the runtime key, not the path filter: that changes with --path-prefix.
    for f in mapper.get("filter", {}).get("and_filter", {}).get("filters", []):
        key = f.get("status_code_filter", {}).get("comparison", {}).get("value", {}).get("runtime_key", "")
        if str(key).startswith(LOCAL_REPLY_RUNTIME_KEY):
            return True
    return False


def _captures(match: dict[str, Any], path: str) -> bool:
    if "path" in match:
        return bool(match["path"] == path)
    if "prefix" in match:
        return path.startswith(match["prefix"])
    if "path_separated_prefix" in match:
        p = match["path_separated_prefix"]
        return path == p or path.startswith(p + "/")
    if "safe_regex" in match:
        try:
            return re.fullmatch(match["safe_regex"]["regex"], path) is not None
        except re.error:  # RE2 syntax Python lacks: cannot tell, let Envoy's order decide
            return False
    return False


def _under(match: dict[str, Any], prefix: str) -> bool:
    """Whether a route of theirs serves some path under a prefix the product claims (which would
    shadow it, the product's routes going first)."""
    for key in ("path", "prefix", "path_separated_prefix"):
        if key in match:
            return bool(str(match[key]).startswith(prefix) or (key != "path" and prefix.startswith(str(match[key]))))
    return _captures(match, prefix + "critique-merge-probe")


def _refuse_conflicts(routes: list[dict[str, Any]], paths: list[str], claimed: list[str], vhost: str) -> None:
    for route in routes:
        match = route.get("match") or {}
        taken = [p for p in paths if _captures(match, p)] + [p for p in claimed if _under(match, p)]
        if taken and not _captures(match, _PROBE):
            label = route.get("name") or match
            raise MergeError(
                f"virtual host {vhost!r}: route {label} already matches the product's path {taken[0]} "
                "(move that route, merge into another virtual host with --virtual-host, "
                "or serve the product under --path-prefix)"
            )
