"""Generate the Envoy config from the catalog: one cluster and one route per model.

`critique-sidecar envoy-config > envoy.yaml` is how the committed envoy.yaml is made; a test
fails when they differ, so the catalog stays the one source of truth for routes.
`--fragment` prints only what the product adds (`build_fragment`); `envoy-merge` inserts that
into an existing bootstrap (envoy/merge.py). The options and their checks: envoy/options.py.

Every product filter is off by default (filter-level `disabled: true`) and turned on by the
product's own routes only, so other routes sharing the listener never call the sidecar."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import orjson
import yaml

from ..core.catalog import Catalog
from ..core.endpoints import ENDPOINTS, NOT_SERVED, Endpoint
from ..core.errors import ApiError
from ..core.scopes import DASHBOARD_PATH, END_USERS_PATH, KEYS_PATH, LIMITS_PATH, MODELS_PATH, SETTINGS_PATH
from ..core.upstream import BaseUrl, UpstreamServer, ca_file_default
from ..core.wire import HEADER_PREFIX, MODEL_HEADER, ROUTE_PATH_CONTEXT
from .identity import NAMESPACE as EXT_AUTHZ_NAMESPACE
from .options import EnvoyOptionError, EnvoyOptions, SidecarTls, check_path_prefix, endpoint_address, listen_address
from .replies import RUNTIME_KEY, answered_by_mappers, claim, no_hosts_cluster, path_filter, status_filter

# Filter names are our own, so they never clash with an ext_authz or buffer filter already in
# an existing chain; per-route configs address a filter by this name.
EXT_AUTHZ = "critique.ext_authz"
EXT_PROC = "critique.ext_proc"
BUFFER = "critique.buffer"
ROUTER = "envoy.filters.http.router"
ROUTE_PREFIX = "critique_"  # every product route's name starts with it (merge.py finds them by it)
# The product's ext_authz and ext_proc filters count under http.<stat_prefix>.ext_authz.critique.*
# (and ext_proc.critique.*), apart from any ext_authz or ext_proc filter of the operator's own.
STAT_PREFIX = "critique"
SIDECAR_CLUSTERS = ("sidecar_grpc", "sidecar_http")
DASHBOARD_PAGE = "/inference-dashboard"
APP_PATHS = (MODELS_PATH, SETTINGS_PATH, DASHBOARD_PATH, KEYS_PATH, LIMITS_PATH, END_USERS_PATH)
METERED_PATHS = tuple(e.path for e in ENDPOINTS)
PRODUCT_PATHS = (*METERED_PATHS, *APP_PATHS, DASHBOARD_PAGE)
# What the ext_proc stream needs to see of the request (path, keys, trace id) and response
# (status, type, encoding), besides the x-critique-* prefix.
_SEEN = (":path", "authorization", *(h for e in ENDPOINTS for h in e.key_headers), "x-request-id", "traceparent")
FORWARDED_HEADERS = (*dict.fromkeys(_SEEN), ":status", "content-type", "content-encoding")
# Largest non-streaming response Envoy buffers for metering, and the largest piece of a
# stream it hands the sidecar in one message: this bounds the sidecar's memory per stream.
UPSTREAM_BUFFER_BYTES = 2 * 1024 * 1024
# Envoy's response flags for a model server that refused the connection, closed it or reset
# the stream before answering. Envoy says 503 for these; the client is told 502 upstream_error,
# so "the model server failed" is never mistaken for "our store is down".
UPSTREAM_FAILURE_FLAGS = ("UF", "UC", "UR", "URX")
UPSTREAM_502_FLAGS = ("UPE", *UPSTREAM_FAILURE_FLAGS, "UH")
_T = "type.googleapis.com/envoy.extensions."
DEFAULT_OPTIONS = EnvoyOptions()  # frozen: safe as a shared default


def _unprefixed(opts: EnvoyOptions, path: str) -> dict[str, Any]:
    """Route settings that hand the sidecar or model server the product's own path: the
    router swaps the matched path back, and ext_authz (which runs before the router and sees
    the client's path) is told it in a context extension (envoy/authz.py)."""
    return {"prefix_rewrite": path} if opts.path_prefix else {}


# --- building blocks ------------------------------------------------------------------------


def _addr(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _cluster(
    name: str,
    endpoints: list[tuple[str, int]],
    *,
    http2: bool = False,
    buffer_bytes: int | None = None,
    hostnames: list[str] | None = None,
) -> dict[str, Any]:
    # Envoy refuses a STATIC cluster with a host name ("vllm.internal:8000", a Kubernetes
    # Service): those are resolved, and re-resolved, by DNS.
    static = all(_is_ip(host) for host, _ in endpoints)
    lb_endpoints = []
    for i, (h, p) in enumerate(endpoints):
        endpoint: dict[str, Any] = {"address": _addr(h, p)}
        if hostnames:
            endpoint["hostname"] = hostnames[i]  # the Host header a route's auto_host_rewrite sends
        lb_endpoints.append({"endpoint": endpoint})
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if buffer_bytes:
        c["per_connection_buffer_limit_bytes"] = buffer_bytes
    return c


def _tls_transport_socket(tls: SidecarTls) -> dict[str, Any]:
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "validation_context": {"trusted_ca": {"filename": tls.ca}},
    }
    if tls.cert and tls.key:
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": tls.cert}, "private_key": {"filename": tls.key}}
        ]
    ctx: dict[str, Any] = {"@type": _T + "transport_sockets.tls.v3.UpstreamTlsContext", "common_tls_context": common}
    if tls.sni:
        ctx["sni"] = tls.sni
        common["validation_context"]["match_typed_subject_alt_names"] = [
            {"san_type": "DNS", "matcher": {"exact": tls.sni}}
        ]
    return {"name": "envoy.transport_sockets.tls", "typed_config": ctx}


def _enabled(per_route_type: str, config: dict[str, Any]) -> dict[str, Any]:
    """Turn on, for one route, a filter that is disabled at the filter level."""
    return {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        "config": {"@type": _T + per_route_type, **config},
    }


def _per_filter(opts: EnvoyOptions, path: str, *, authz: bool, proc: bool, buffer: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if authz:
        check: dict[str, Any] = {}
        if opts.path_prefix:
            check["context_extensions"] = {ROUTE_PATH_CONTEXT: path}
        out[EXT_AUTHZ] = _enabled("filters.http.ext_authz.v3.ExtAuthzPerRoute", {"check_settings": check})
    if buffer:
        # The buffer filter's limit is the stream's, responses included (Envoy keeps one buffer
        # limit per stream): a metered JSON response needs max_response_bytes of it. Request
        # bodies past max_request_bytes are refused by the sidecar (413, as the ASGI door does)
        # and, when they announce their length, by the product's route before anything is read.
        out[BUFFER] = _enabled(
            "filters.http.buffer.v3.BufferPerRoute", {"buffer": {"max_request_bytes": stream_buffer_bytes(opts)}}
        )
    if proc:
        out[EXT_PROC] = _enabled("filters.http.ext_proc.v3.ExtProcPerRoute", {"overrides": {}})
    return out


def _json_reply(status: int, code: str, message: str, shape: str = "openai") -> dict[str, Any]:
    """A route answered by Envoy itself, in the product's JSON error shape (an endpoint's own:
    Anthropic's for Messages)."""
    error = ApiError(code, message)
    error.shape = shape
    return {
        "direct_response": {"status": status, "body": {"inline_string": error.body().decode()}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }


def _too_large(opts: EnvoyOptions) -> str:
    return f"Request body exceeds {opts.max_request_bytes} bytes"


# --- what the product adds ------------------------------------------------------------------


def upstream_cluster(name: str) -> str:
    """The Envoy cluster of the catalog's upstream `name`."""
    return f"upstream_{name}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _model_routes(
    catalog: Catalog, endpoint: Endpoint, opts: EnvoyOptions, filters: dict[str, Any]
) -> list[dict[str, Any]]:
    """One route per model serving the endpoint: matched by the model header the sidecar sets,
    the path rewritten onto the model's upstream base URL, the Host header its replica's."""
    routes = []
    path = opts.public(endpoint.path)
    seen: set[str] = set()
    for model in catalog.models:
        if endpoint.name not in model.endpoints:
            continue
        server = catalog.upstream_of(model)
        name = f"{ROUTE_PREFIX}model_{_slug(endpoint.name)}__{_slug(model.id)}"
        while name in seen:  # two ids with the same slug
            name += "_"
        seen.add(name)
        routes.append(
            {
                "name": name,
                "match": {"path": path, "headers": [{"name": MODEL_HEADER, "string_match": {"exact": model.id}}]},
                "route": {
                    "cluster": upstream_cluster(model.upstream),
                    "timeout": f"{opts.upstream_timeout_s}s",
                    "idle_timeout": "120s",
                    "prefix_rewrite": server.path + endpoint.suffix,
                    "auto_host_rewrite": True,
                },
                "request_headers_to_remove": [MODEL_HEADER],
                "typed_per_filter_config": filters,
            }
        )
    return routes


def metered_routes(catalog: Catalog, endpoint: Endpoint, opts: EnvoyOptions) -> list[dict[str, Any]]:
    """An endpoint's routes: too large, one per model, and unrouted (all named critique_*)."""
    filters = _per_filter(opts, endpoint.path, authz=opts.chat_auth == "ext_authz", proc=True, buffer=True)
    path = opts.public(endpoint.path)
    slug = _slug(endpoint.name)
    # A body announced larger than the limit is refused from its headers alone, at once: the
    # buffer filter would otherwise wait for the bytes (a slow client holds the request open
    # until the idle timeout). Bodies without a Content-Length meet the buffer filter's 413.
    too_large: dict[str, Any] = {
        "name": f"{ROUTE_PREFIX}{slug}_body_too_large",
        "match": {
            "path": path,
            "headers": [{"name": "content-length", "range_match": {"start": opts.max_request_bytes + 1, "end": 2**62}}],
        },
        **_json_reply(413, "request_too_large", _too_large(opts), endpoint.error_shape),
    }
    # Before ext_proc has read the body there is no model header yet: this route carries the
    # filter settings. Reaching its direct response means no model route matched.
    unrouted = {
        "name": f"{ROUTE_PREFIX}{slug}_unrouted",
        "match": {"path": path},
        **_json_reply(503, "service_unavailable", "The request could not be routed to a model", endpoint.error_shape),
        "typed_per_filter_config": filters,
    }
    # Only POST: any other method is refused before the sidecar is asked anything.
    not_post = {
        "name": f"{ROUTE_PREFIX}{slug}_method_not_allowed",
        "match": {
            "path": path,
            "headers": [{"name": ":method", "string_match": {"exact": "POST"}, "invert_match": True}],
        },
        **_json_reply(405, "method_not_allowed", "Use POST on this endpoint", endpoint.error_shape),
    }
    return [not_post, too_large, *_model_routes(catalog, endpoint, opts, filters), unrouted]


def product_routes(catalog: Catalog, opts: EnvoyOptions) -> list[dict[str, Any]]:
    """The product's routes, exact paths only, each named critique_*."""
    routes: list[dict[str, Any]] = []
    for endpoint in ENDPOINTS:
        routes += metered_routes(catalog, endpoint, opts)
    for path in APP_PATHS:
        routes.append(
            {
                "name": ROUTE_PREFIX + path.strip("/").replace("/", "_").replace("-", "_"),
                "match": {"path": opts.public(path)},
                "route": {"cluster": "sidecar_http", "timeout": "10s", **_unprefixed(opts, path)},
                "typed_per_filter_config": _per_filter(opts, path, authz=True, proc=False, buffer=False),
            }
        )
    routes.append(
        {
            "name": ROUTE_PREFIX + "dashboard_page",
            "match": {"path": opts.public(DASHBOARD_PAGE)},
            "route": {"cluster": "sidecar_http", "timeout": "10s", **_unprefixed(opts, DASHBOARD_PAGE)},
        }
    )
    # Nothing else under the product's API reaches a model server (or anything else).
    for prefix, why in NOT_SERVED.items():
        name = "api_not_found" if prefix.count("/") == 3 else _slug(prefix) + "_not_served"
        routes.append(
            {
                "name": ROUTE_PREFIX + name,
                "match": {"prefix": opts.public(prefix)},
                **_json_reply(404, "not_found", why),
            }
        )
    return routes


def _catch_all() -> dict[str, Any]:
    return {
        "name": ROUTE_PREFIX + "not_found",
        "match": {"prefix": "/"},
        **_json_reply(404, "not_found", "No such route"),
    }


def http_filters(opts: EnvoyOptions) -> list[dict[str, Any]]:
    """The product's three filters (each disabled until a product route enables it); they go
    right before the router."""
    timeout = f"{opts.sidecar_timeout_ms / 1000:g}s"
    grpc_service = {"envoy_grpc": {"cluster_name": "sidecar_grpc"}, "timeout": timeout}
    return [
        {
            "name": EXT_AUTHZ,
            "disabled": True,
            "typed_config": {
                "@type": _T + "filters.http.ext_authz.v3.ExtAuthz",
                "grpc_service": grpc_service,
                "transport_api_version": "V3",
                "failure_mode_allow": False,
                "status_on_error": {"code": 503},
                "stat_prefix": STAT_PREFIX,
            },
        },
        {
            "name": BUFFER,
            "disabled": True,
            "typed_config": {
                "@type": _T + "filters.http.buffer.v3.Buffer",
                "max_request_bytes": stream_buffer_bytes(opts),
            },
        },
        {
            "name": EXT_PROC,
            # Off by default, on only where a route enables it (the chat routes). A reply Envoy
            # makes before any route is chosen (431 for oversized headers, 400 for a malformed
            # request) otherwise waited on ext_proc until the connection closed: the client
            # got an empty reply instead of the error.
            "disabled": True,
            "typed_config": {
                "@type": _T + "filters.http.ext_proc.v3.ExternalProcessor",
                "grpc_service": grpc_service,
                "failure_mode_allow": False,
                "message_timeout": timeout,
                "allow_mode_override": True,
                "processing_mode": {
                    "request_header_mode": "SEND",
                    "request_body_mode": "BUFFERED",
                    "response_header_mode": "SEND",
                    "response_body_mode": "BUFFERED",
                    "request_trailer_mode": "SKIP",
                    "response_trailer_mode": "SKIP",
                },
                "metadata_options": {"forwarding_namespaces": {"untyped": [EXT_AUTHZ_NAMESPACE]}},
                # Only the headers the exchange reads (core/exchange.py): less for Envoy to
                # serialise and us to parse on every request, and no cookies or other client
                # headers ever reach the sidecar. Every x-critique-* header is still seen (and
                # stripped); removals need no forwarding.
                "forward_rules": {
                    "allowed_headers": {
                        "patterns": [{"exact": h} for h in FORWARDED_HEADERS] + [{"prefix": HEADER_PREFIX}]
                    }
                },
                "status_on_error": {"code": 503},
                "stat_prefix": STAT_PREFIX,
            },
        },
    ]


def _router() -> dict[str, Any]:
    return {"name": ROUTER, "typed_config": {"@type": _T + "filters.http.router.v3.Router"}}


# Local-reply mappers carry this in their status filter's runtime key (merge.py finds them by it).
LOCAL_REPLY_RUNTIME_KEY = RUNTIME_KEY


def product_path_filter(routes: list[dict[str, Any]]) -> dict[str, Any]:
    """A request to one of the product's routes' paths (query string aside): local-reply
    mappers carry it so that, in a shared listener, they rewrite the product's replies only."""
    return path_filter(routes)


def _local_reply_mapper(
    status: int,
    code: str,
    message: str,
    new_status: int | None = None,
    flags: tuple[str, ...] = (),
    scope: dict[str, Any] | None = None,
    shape: str = "openai",
) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [status_filter(status, f"{LOCAL_REPLY_RUNTIME_KEY}{status}")]
    if flags:
        filters.append({"response_flag_filter": {"flags": list(flags)}})
    if scope is not None:
        filters.append(scope)
    error = ApiError(code, message)
    error.shape = shape
    mapper: dict[str, Any] = {
        "filter": filters[0] if len(filters) == 1 else {"and_filter": {"filters": filters}},
        "body": {"inline_string": error.body().decode()},
        "body_format_override": {
            "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
            "content_type": "application/json",
        },
    }
    if new_status:
        mapper["status_code"] = new_status
    return mapper


_UNAVAILABLE = "The service is unavailable; retry shortly"


def sidecar_route_mappers(sidecar_routes: dict[str, Any]) -> list[dict[str, Any]]:
    """On the routes the sidecar answers itself (models, settings, dashboard and its page), a
    failed or timed-out connection is the sidecar's, never a model server's."""
    return [
        _local_reply_mapper(503, "service_unavailable", _UNAVAILABLE, scope=sidecar_routes),
        _local_reply_mapper(502, "service_unavailable", _UNAVAILABLE, 503, scope=sidecar_routes),
        _local_reply_mapper(504, "service_unavailable", _UNAVAILABLE, 503, scope=sidecar_routes),
    ]


def local_reply_mappers(opts: EnvoyOptions, *, scope: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Envoy's own error replies (body too large, sidecar or upstream unreachable, timeouts) in
    the product's JSON error shape; on an endpoint with its own shape (Messages: Anthropic's),
    in that one. `scope`: only for requests it matches (None: all)."""
    replies: list[tuple[int, str, str, int | None, tuple[str, ...]]] = [
        (413, "request_too_large", _too_large(opts), None, ()),
        # Envoy's own (the sidecar never answers 431). No 400 mapper: it would also replace
        # the sidecar's specific invalid_request messages.
        (431, "invalid_request", "Request headers are too large or too many", None, ()),
        # Envoy's 500 on a product route: a JSON response larger than the stream buffers (the
        # request was charged its bound; a retry would be charged again).
        (
            500,
            "response_too_large",
            f"The model server's response is larger than this gateway meters ({opts.max_response_bytes} bytes); "
            "ask for fewer choices, tokens or logprobs",
            502,
            (),
        ),
        (503, "upstream_error", "The model server failed to answer", 502, UPSTREAM_FAILURE_FLAGS),
        (503, "service_unavailable", _UNAVAILABLE, None, ()),
        # Only Envoy's own 502s (flagged): the sidecar's 502 (the model server refused the
        # gateway's credentials) keeps its own code and message.
        (502, "upstream_error", "The model server failed to answer", None, UPSTREAM_502_FLAGS),
        (504, "upstream_timeout", "The model server timed out", None, ()),
    ]
    mappers = []
    for shape in sorted({e.error_shape for e in ENDPOINTS} - {"openai"}):
        paths = path_filter([{"match": {"path": opts.public(e.path)}} for e in ENDPOINTS if e.error_shape == shape])
        within = paths if scope is None else {"and_filter": {"filters": [scope, paths]}}
        mappers += [_local_reply_mapper(*r, scope=within, shape=shape) for r in replies]
    return mappers + [_local_reply_mapper(*r, scope=scope) for r in replies]


def _product(catalog: Catalog, opts: EnvoyOptions, *, scoped: bool) -> dict[str, Any]:
    """The product's routes, clusters and local-reply mappers, in the order they go in.

    Its self-answering routes become mappers (replies.py: so CORS and route headers apply to
    them); on the sidecar's routes a connection failure is the sidecar's; then the product's
    error shapes; then, in someone else's listener, every other local reply on its routes is
    claimed as it is, so the operator's local-reply settings never reach them."""
    routes, answers = answered_by_mappers(product_routes(catalog, opts))
    scope = product_path_filter(routes)
    sidecar = path_filter([r for r in routes if r.get("route", {}).get("cluster") == "sidecar_http"])
    mappers = [*answers, *sidecar_route_mappers(sidecar), *local_reply_mappers(opts, scope=scope if scoped else None)]
    if scoped:
        mappers.append(claim(scope))
    return {
        "routes": routes,
        "local_reply_mappers": mappers,
        "clusters": [*clusters(catalog, opts), no_hosts_cluster()],
    }


def clusters(catalog: Catalog, opts: EnvoyOptions) -> list[dict[str, Any]]:
    grpc_endpoints = [endpoint_address(a, "--sidecar-grpc") for a in opts.sidecar_grpc]
    sidecar_grpc = _cluster("sidecar_grpc", grpc_endpoints, http2=True)
    sidecar_grpc["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "1s",
            "no_traffic_interval": "1s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "grpc_health_check": {},
        }
    ]
    if opts.sidecar_tls:
        sidecar_grpc["transport_socket"] = _tls_transport_socket(opts.sidecar_tls)
    out = [sidecar_grpc, _cluster("sidecar_http", [endpoint_address(opts.sidecar_http, "--sidecar-http")])]
    used = dict.fromkeys(m.upstream for m in catalog.models)  # in catalog order, once each
    out += [upstream_cluster_config(name, catalog.upstreams[name]) for name in used]
    return out


def upstream_cluster_config(name: str, server: UpstreamServer) -> dict[str, Any]:
    """The cluster of one upstream: its replicas, each sending its own Host header; TLS verified
    against the base URL's host (SNI too) with its CA file or the system's."""
    replicas = server.replicas()
    cluster = _cluster(
        upstream_cluster(name),
        [(r.host, r.port) for r in replicas],
        buffer_bytes=UPSTREAM_BUFFER_BYTES,
        hostnames=[r.authority for r in replicas],
    )
    if cluster["type"] == "STRICT_DNS":
        cluster["dns_lookup_family"] = "V4_PREFERRED"  # "localhost" and dual-stack names: IPv4 first
    if server.tls:
        cluster["transport_socket"] = _upstream_tls(replicas[0], str(server.ca_file or ca_file_default()))
    return cluster


def _upstream_tls(replica: BaseUrl, ca_file: str) -> dict[str, Any]:
    san = (
        {"san_type": "IP_ADDRESS", "matcher": {"exact": replica.host}}
        if _is_ip(replica.host)
        else {
            "san_type": "DNS",
            "matcher": {"exact": replica.host},
        }
    )
    context: dict[str, Any] = {
        "@type": _T + "transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": {
            "validation_context": {"trusted_ca": {"filename": ca_file}, "match_typed_subject_alt_names": [san]}
        },
    }
    if not _is_ip(replica.host):
        context["sni"] = replica.host
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def stream_buffer_bytes(opts: EnvoyOptions) -> int:
    """What a metered request's stream may buffer: a whole request body, and a whole JSON
    response, which ext_proc's buffered mode holds before metering it."""
    return max(opts.max_request_bytes, opts.max_response_bytes)


def listener_buffer_bytes(opts: EnvoyOptions) -> int:
    """The listener's buffer limit: a stream's, plus room for the headers."""
    return stream_buffer_bytes(opts) + 65536


def build_fragment(catalog: Catalog, opts: EnvoyOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """Only what the product adds to an existing Envoy (merge.py inserts it)."""
    product = _product(catalog, opts, scoped=True)
    return {
        "http_filters": http_filters(opts),
        "routes": product["routes"],
        "local_reply_mappers": product["local_reply_mappers"],
        "clusters": product["clusters"],
    }


def build_config(catalog: Catalog, opts: EnvoyOptions = DEFAULT_OPTIONS) -> dict[str, Any]:
    """A whole bootstrap: one listener that serves the product and answers 404 to the rest."""
    product = _product(catalog, opts, scoped=False)
    hcm = {
        "@type": _T + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": opts.stat_prefix,
        "codec_type": "AUTO",
        "use_remote_address": True,
        "request_timeout": "300s",
        "stream_idle_timeout": "120s",
        "route_config": {
            "name": "critique",
            "virtual_hosts": [
                {
                    "name": opts.virtual_host,
                    "domains": list(opts.domains),
                    "routes": [*product["routes"], _catch_all()],
                }
            ],
        },
        "http_filters": [*http_filters(opts), _router()],
        # The listener is the product's alone: its local replies are all rewritten.
        "local_reply_config": {"mappers": product["local_reply_mappers"]},
    }
    return {
        "admin": {"address": _addr(*listen_address(opts.admin, "--admin"))},
        "static_resources": {
            "listeners": [
                {
                    "name": "critique",
                    "address": _addr(*listen_address(opts.listen)),
                    "per_connection_buffer_limit_bytes": listener_buffer_bytes(opts),
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": product["clusters"],
        },
    }


HEADER = "# Generated by `critique-sidecar envoy-config` from the model catalog. Do not edit by hand:\n# change catalog.toml (or the options) and regenerate; a test checks this file is current.\n"
FRAGMENT_HEADER = (
    "# What critique-sidecar adds to an existing Envoy (`critique-sidecar envoy-config --fragment`).\n"
    "# http_filters: before your router; routes: first in your virtual host; local_reply_mappers:\n"
    "# first in your HTTP connection manager's local_reply_config; clusters: beside yours.\n"
    "# `critique-sidecar envoy-merge your-envoy.yaml` does all of that for you.\n"
)


def to_yaml(data: Any) -> str:
    # Round-trip through JSON so YAML gets plain types only.
    text: str = yaml.safe_dump(orjson.loads(orjson.dumps(data)), sort_keys=False, width=120)
    return text


def render(catalog: Catalog, opts: EnvoyOptions = DEFAULT_OPTIONS) -> str:
    return HEADER + to_yaml(build_config(catalog, opts))


def render_fragment(catalog: Catalog, opts: EnvoyOptions = DEFAULT_OPTIONS) -> str:
    return FRAGMENT_HEADER + to_yaml(build_fragment(catalog, opts))


__all__ = [  # the options (options.py) stay importable from here, where callers and tests import them
    "EnvoyOptionError",
    "EnvoyOptions",
    "SidecarTls",
    "check_path_prefix",
    "endpoint_address",
    "listen_address",
]
