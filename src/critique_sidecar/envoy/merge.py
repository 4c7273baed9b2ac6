"""Insert the product into an existing Envoy bootstrap (`critique-sidecar envoy-merge`).

Into one HTTP connection manager (one listener, chosen by name or address, one virtual host)
it adds the product's filters right before the router, the product's routes first in the
virtual host, its scoped local-reply mappers first, and its clusters. Everything else stays as
written. What an earlier merge added is recognised (filter names, route names, the mappers'
runtime keys, a cluster marker) and removed wherever it is, so merging twice gives the same
result and merging into another listener or virtual host moves the product there. Ambiguous
targets and existing routes that could take the product's paths are refused."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from .config import BUFFER, EXT_AUTHZ, EXT_PROC, ROUTE_PREFIX, ROUTER
from .options import EnvoyOptionError
from .replies import is_ours
from .route_match import Undecidable, captures

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
    listeners = resources.get("listeners") or []
    hcm = _connection_manager(_listener(listeners, listener))
    vhost = _virtual_host(hcm, virtual_host)
    for other in (h for lst in listeners for h in _hcms(lst)):
        _remove_product(other)  # an earlier merge's, wherever it went

    hcm["http_filters"] = _with_filters(hcm.get("http_filters") or [], fragment["http_filters"])
    routes = vhost.get("routes") or []
    _refuse_conflicts(routes, fragment["routes"], vhost.get("name", "?"))
    vhost["routes"] = [*copy.deepcopy(fragment["routes"]), *routes]
    reply = hcm.setdefault("local_reply_config", {})
    reply["mappers"] = [*copy.deepcopy(fragment["local_reply_mappers"]), *(reply.get("mappers") or [])]

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


def _remove_product(hcm: dict[str, Any]) -> None:
    if "http_filters" in hcm:
        hcm["http_filters"] = [f for f in hcm["http_filters"] or [] if f.get("name") not in OUR_FILTERS]
    for vhost in (hcm.get("route_config") or {}).get("virtual_hosts") or []:
        if "routes" in vhost:
            vhost["routes"] = [r for r in vhost["routes"] or [] if not str(r.get("name", "")).startswith(ROUTE_PREFIX)]
    reply = hcm.get("local_reply_config")
    if isinstance(reply, dict) and "mappers" in reply:
        reply["mappers"] = [m for m in reply["mappers"] or [] if not is_ours(m)]


def _address(listener: dict[str, Any]) -> str | None:
    """`IP:PORT` (`[IPv6]:PORT`) of a listener on a socket address."""
    sock = (listener.get("address") or {}).get("socket_address") or {}
    if "address" not in sock or "port_value" not in sock:
        return None
    host = str(sock["address"])
    return f"[{host}]:{sock['port_value']}" if ":" in host else f"{host}:{sock['port_value']}"


def _label(listener: dict[str, Any]) -> str:
    if listener.get("name"):
        return repr(listener["name"])
    return _address(listener) or "an unnamed listener without a socket address"


def _listener(listeners: list[dict[str, Any]], chosen: str | None) -> dict[str, Any]:
    """The listener named `chosen`, or on the address `chosen` (IP:PORT, as Envoy's examples
    leave listeners unnamed); with none chosen, the only one with an HTTP connection manager."""
    if chosen is not None:
        found = [lst for lst in listeners if lst.get("name") == chosen] or [
            lst for lst in listeners if _address(lst) == chosen
        ]
        if len(found) != 1:
            what = "no listener" if not found else f"{len(found)} listeners"
            raise MergeError(f"{what} named or at {chosen!r}; listeners: {_labels(listeners)}")
        return found[0]
    http = [lst for lst in listeners if _hcms(lst)]
    if len(http) != 1:
        what = "no listener with an HTTP connection manager" if not http else "several HTTP listeners"
        raise MergeError(f"{what} ({_labels(http or listeners)}): choose one with --listener NAME or IP:PORT")
    return http[0]


def _labels(listeners: list[dict[str, Any]]) -> str:
    return ", ".join(_label(lst) for lst in listeners) or "none"


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
    name = _label(listener)
    if len(hcms) != 1:
        raise MergeError(
            f"listener {name} has {len(hcms)} HTTP connection managers; the merge needs exactly one "
            "(merge into a listener with one filter chain, or add the fragment by hand)"
        )
    if "route_config" not in hcms[0]:
        raise MergeError(f"listener {name} takes its routes from RDS: add the fragment's routes on your control plane")
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
    routers = [
        i
        for i, f in enumerate(filters)
        if f.get("name") == ROUTER or f.get("typed_config", {}).get("@type") == ROUTER_TYPE
    ]
    if not routers:
        raise MergeError("the HTTP connection manager has no router filter to insert the product's filters before")
    at = routers[0]
    return [*filters[:at], *copy.deepcopy(ours), *filters[at:]]


def _product_paths(routes: list[dict[str, Any]]) -> list[str]:
    """Paths a request to the product can have: each exact path, and a path under each prefix."""
    paths = [r["match"].get("path") or r["match"]["prefix"] + _PROBE.lstrip("/") for r in routes]
    return list(dict.fromkeys(paths))


def _shadowed(match: dict[str, Any], prefixes: list[str]) -> list[str]:
    """The product's prefixes that a route of theirs serves only paths under: the product's
    routes go first, so that route would never be reached (its requests would be the product's
    404s)."""
    value = _literal_start(match)
    if value is None:
        return []
    if match.get("case_sensitive") is False:
        return [p for p in prefixes if value.lower().startswith(p.lower())]
    return [p for p in prefixes if value.startswith(p)]


def _literal_start(match: dict[str, Any]) -> str | None:
    """What every path a route of theirs takes starts with, as far as its matcher says."""
    for key in ("path", "prefix", "path_separated_prefix"):
        if key in match:
            return str(match[key])
    if "safe_regex" in match:
        return re.match(r"[^.^$*+?()\[\]{}|\\]*", str((match["safe_regex"] or {}).get("regex", ""))).group()  # type: ignore[union-attr]
    template = ((match.get("path_match_policy") or {}).get("typed_config") or {}).get("path_template")
    return re.split(r"[{*]", str(template), maxsplit=1)[0] if template else None


def _refuse_conflicts(routes: list[dict[str, Any]], product: list[dict[str, Any]], vhost: str) -> None:
    paths = _product_paths(product)
    prefixes = [str(r["match"]["prefix"]) for r in product if "prefix" in r["match"]]
    for route in routes:
        match = route.get("match") or {}
        label = route.get("name") or match
        try:
            taken = [p for p in paths if captures(match, p)] + _shadowed(match, prefixes)
            catch_all = captures(match, _PROBE)
        except Undecidable as exc:
            raise MergeError(
                f"virtual host {vhost!r}: route {label}: cannot tell whether it takes the product's paths: {exc} "
                "(merge into another virtual host with --virtual-host, or add the fragment by hand)"
            ) from None
        if taken and not catch_all:
            raise MergeError(
                f"virtual host {vhost!r}: route {label} already matches the product's path {taken[0]} "
                "(move that route, merge into another virtual host with --virtual-host, "
                "or serve the product under --path-prefix)"
            )
