"""Existing Envoy deployments, written for these tests: what `envoy-merge` must leave alone.

`edge_bootstrap` is an operator's own gateway: two listeners (plain HTTP and TLS termination),
two virtual hosts with domains, their own ext_authz, Lua, CORS and gzip filters, their own
local_reply_config (a 404 mapper and a global JSON body_format), route-config response headers
and stat prefixes, routes matched by prefix, regex and header, a backend that is down.
`examples_gzip_bootstrap` has the shape of Envoy's published gzip example: two listeners with no
names. `probes` are the requests whose answers must not change when the product is added."""

from __future__ import annotations

import gzip
import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

T = "type.googleapis.com/envoy.extensions."


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
    }


def _direct(status: int, body: str) -> dict[str, Any]:
    return {"direct_response": {"status": status, "body": {"inline_string": body}}}


# Every response of the edge's route configuration carries it (route_config.response_headers_to_add).
EDGE_HEADER = "x-edge-route-config"


def _hcm(stat_prefix: str, vhosts: list[dict[str, Any]], filters: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": T + "filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {
                "name": f"{stat_prefix}_routes",
                "virtual_hosts": vhosts,
                "response_headers_to_add": [{"header": {"key": EDGE_HEADER, "value": stat_prefix}}],
            },
            "http_filters": [
                *filters,
                {"name": "envoy.filters.http.router", "typed_config": {"@type": T + "filters.http.router.v3.Router"}},
            ],
            **extra,
        },
    }


@dataclass
class Ports:
    http: int
    tls: int
    admin: int
    backend: int
    down: int  # nothing listens: their "down" backend, and their ext_authz service


def edge_bootstrap(p: Ports, cert: Path, key: Path) -> dict[str, Any]:
    their_filters = [
        {
            # Their own auth service, on for /private only; it is unreachable, so /private is 403.
            "name": "envoy.filters.http.ext_authz",
            "disabled": True,
            "typed_config": {
                "@type": T + "filters.http.ext_authz.v3.ExtAuthz",
                "http_service": {
                    "server_uri": {"uri": f"http://127.0.0.1:{p.down}", "cluster": "their_authz", "timeout": "0.5s"}
                },
                "transport_api_version": "V3",
            },
        },
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": T + "filters.http.cors.v3.Cors"}},
        {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": T + "filters.http.lua.v3.Lua",
                "default_source_code": {
                    "inline_string": "function envoy_on_response(h) h:headers():add('x-edge-lua', 'seen') end"
                },
            },
        },
        {
            "name": "envoy.filters.http.compressor",
            "typed_config": {
                "@type": T + "filters.http.compressor.v3.Compressor",
                "response_direction_config": {"common_config": {"min_content_length": 100}},
                "compressor_library": {
                    "name": "gzip",
                    "typed_config": {"@type": T + "compression.gzip.compressor.v3.Gzip"},
                },
            },
        },
    ]
    cors = {
        "@type": T + "filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": "https://app.example.test"}],
        "allow_methods": "GET, POST",
        "allow_headers": "authorization, content-type",
        "max_age": "600",
    }
    api_routes = [
        {"name": "legacy", "match": {"prefix": "/legacy/"}, "route": {"cluster": "legacy"}},
        {"name": "items", "match": {"safe_regex": {"regex": "/v[0-9]+/items/[0-9]+"}}, "route": {"cluster": "legacy"}},
        {
            "name": "blue_tenant",
            "match": {"prefix": "/", "headers": [{"name": "x-tenant", "string_match": {"exact": "blue"}}]},
            **_direct(200, "blue tenant home"),
        },
        {"name": "down", "match": {"prefix": "/down/"}, "route": {"cluster": "legacy_down"}},
        {
            "name": "private",
            "match": {"path": "/private"},
            "route": {"cluster": "legacy"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "config": {"@type": T + "filters.http.ext_authz.v3.ExtAuthzPerRoute", "check_settings": {}},
                }
            },
        },
        {"name": "gone", "match": {"path": "/gone"}, **_direct(404, "")},
        {"name": "home", "match": {"prefix": "/"}, **_direct(200, "edge home " + "x" * 200)},
    ]
    vhosts = [
        {"name": "www", "domains": ["www.example.test"], "routes": [{"match": {"prefix": "/"}, **_direct(200, "www")}]},
        {
            "name": "api",
            "domains": ["*"],
            "routes": api_routes,
            "typed_per_filter_config": {"envoy.filters.http.cors": cors},
        },
    ]
    # Their own local replies: every 404 Envoy makes gets their text, and a marker header; every
    # local reply is wrapped in their JSON envelope.
    local_reply = {
        "body_format": {"json_format": {"edge_error": "%LOCAL_REPLY_BODY%", "status": "%RESPONSE_CODE%"}},
        "mappers": [
            {
                "filter": {
                    "status_code_filter": {
                        "comparison": {"op": "EQ", "value": {"default_value": 404, "runtime_key": "edge.404"}}
                    }
                },
                "body": {"inline_string": "edge: nothing here"},
                "headers_to_add": [{"header": {"key": "x-edge-reply", "value": "mapped"}}],
            }
        ],
    }
    tls_context = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T + "transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
                ]
            },
        },
    }
    tls_routes = [{"name": "tls_legacy", "match": {"prefix": "/"}, "route": {"cluster": "legacy"}}]
    return {
        "admin": {"address": _addr(p.admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "edge_http",
                    "address": _addr(p.http),
                    "filter_chains": [
                        {"filters": [_hcm("edge_http", vhosts, their_filters, local_reply_config=local_reply)]}
                    ],
                },
                {
                    "name": "edge_tls",
                    "address": _addr(p.tls),
                    "filter_chains": [
                        {
                            "transport_socket": tls_context,
                            "filters": [
                                _hcm("edge_tls", [{"name": "tls", "domains": ["*"], "routes": tls_routes}], [])
                            ],
                        }
                    ],
                },
            ],
            "clusters": [
                _cluster("legacy", p.backend),
                _cluster("legacy_down", p.down),
                _cluster("their_authz", p.down),
            ],
        },
    }


def examples_gzip_bootstrap(service: int, stats: int, admin: int, backend: int) -> dict[str, Any]:
    """Shaped as Envoy's published gzip example: two listeners without names (one proxying a
    service, one Envoy's own stats), each compressing responses, each with one virtual host."""

    def listener(port: int, vhost: str, cluster: str, prefix: str) -> dict[str, Any]:
        compressor = {
            "name": "envoy.filters.http.compressor",
            "typed_config": {
                "@type": T + "filters.http.compressor.v3.Compressor",
                "response_direction_config": {"common_config": {"min_content_length": 100}},
                "compressor_library": {
                    "name": "text_optimized",
                    "typed_config": {"@type": T + "compression.gzip.compressor.v3.Gzip"},
                },
            },
        }
        route = {"match": {"prefix": prefix}, "route": {"cluster": cluster}}
        return {
            "address": _addr(port),
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": T + "filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "codec_type": "AUTO",
                                "stat_prefix": "ingress_http",
                                "route_config": {
                                    "name": "local_route",
                                    "virtual_hosts": [{"name": vhost, "domains": ["*"], "routes": [route]}],
                                },
                                "http_filters": [
                                    compressor,
                                    {
                                        "name": "envoy.filters.http.router",
                                        "typed_config": {"@type": T + "filters.http.router.v3.Router"},
                                    },
                                ],
                            },
                        }
                    ]
                }
            ],
        }

    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [listener(service, "backend", "service", "/"), listener(stats, "stats", "envoy-stats", "/")],
            "clusters": [_cluster("service", backend), _cluster("envoy-stats", admin)],
        },
    }


# --- their backend -----------------------------------------------------------------------


class _Backend(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str]]] = []  # (path, authorization) of every request

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("authorization", "")))
        body = json.dumps({"backend": "legacy", "path": self.path, "padding": "y" * 300}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-backend", "legacy")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def legacy_backend(port: int) -> Iterator[list[tuple[str, str]]]:
    """Their backend on `port`; yields the list of (path, authorization) it receives."""
    seen: list[tuple[str, str]] = []
    handler = type("Backend", (_Backend,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


# --- the requests whose answers must not change ---------------------------------------------

# Headers that carry meaning for a client; date, server timing and the like vary per request.
COMPARED = (
    "content-type",
    "content-encoding",
    "x-edge-lua",
    "x-edge-reply",
    EDGE_HEADER,
    "x-backend",
    "access-control-allow-origin",
    "access-control-allow-methods",
    "www-authenticate",
    "location",
)

PROBES: list[tuple[str, str, str, dict[str, str]]] = [  # (name, method, path, headers)
    ("home", "GET", "/", {}),
    ("home gzip", "GET", "/", {"accept-encoding": "gzip"}),
    ("www vhost", "GET", "/", {"host": "www.example.test"}),
    ("legacy prefix", "GET", "/legacy/orders?id=7", {}),
    ("legacy gzip", "GET", "/legacy/orders", {"accept-encoding": "gzip"}),
    ("regex route", "GET", "/v2/items/42", {}),
    ("regex miss", "GET", "/v2/items/x", {}),
    ("header route", "GET", "/anything", {"x-tenant": "blue"}),
    ("their 404 mapper", "GET", "/gone", {}),
    ("down backend", "GET", "/down/x", {}),
    ("their ext_authz", "GET", "/private", {}),
    (
        "cors preflight",
        "OPTIONS",
        "/legacy/x",
        {"origin": "https://app.example.test", "access-control-request-method": "GET"},
    ),
    ("cors simple", "GET", "/legacy/x", {"origin": "https://app.example.test"}),
    ("api-like path of theirs", "GET", "/api/v2/widgets", {}),
    ("headers too large", "GET", "/legacy/x", {"x-big": "a" * 70_000}),
]


def answer(
    port: int, method: str, path: str, headers: dict[str, str], tls: ssl.SSLContext | None = None
) -> dict[str, Any]:
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=tls)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        got = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    if got.get("content-encoding") == "gzip":
        body = gzip.decompress(body)  # compare what was said, not the compressor's bytes
    return {"status": resp.status, "headers": {h: got.get(h) for h in COMPARED}, "body": body}


def answers(ports: Ports, tls: ssl.SSLContext) -> dict[str, dict[str, Any]]:
    out = {name: answer(ports.http, method, path, headers) for name, method, path, headers in PROBES}
    out["tls listener"] = answer(ports.tls, "GET", "/legacy/secure", {}, tls=tls)
    return out
