"""envoy/merge.py and the envoy-config options: what is refused, with which message, and that
a merge is idempotent and leaves the rest of a bootstrap alone. (The merged configs running in
the real Envoy: tests/e2e/test_dropin_merge.py.)"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from critique_sidecar import cli
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.envoy.config import (
    BUFFER,
    EXT_AUTHZ,
    EXT_PROC,
    EnvoyOptionError,
    EnvoyOptions,
    build_config,
    build_fragment,
)
from critique_sidecar.envoy.merge import MergeError, merge

FRAGMENT = build_fragment(load_catalog())
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def hcm(vhosts: list[dict[str, Any]], filters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "theirs",
            "route_config": {"virtual_hosts": vhosts},
            "http_filters": [*(filters or []), ROUTER],
        },
    }


def vhost(name: str, *routes: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "domains": [name], "routes": list(routes)}


def bootstrap(*listeners: dict[str, Any]) -> dict[str, Any]:
    return {"static_resources": {"listeners": list(listeners), "clusters": [{"name": "legacy"}]}}


def listener(name: str, *vhosts: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "filter_chains": [{"filters": [hcm(list(vhosts))]}]}


HOME = {"name": "home", "match": {"prefix": "/"}, "route": {"cluster": "legacy"}}


def the_hcm(config: dict[str, Any], index: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = config["static_resources"]["listeners"][index]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return out


def test_merge_inserts_the_product_before_the_router_and_first_in_the_vhost_and_is_idempotent() -> None:
    lua = {"name": "envoy.filters.http.lua", "typed_config": {}}
    existing = bootstrap({"name": "web", "filter_chains": [{"filters": [hcm([vhost("api", HOME)], [lua])]}]})
    original = copy.deepcopy(existing)
    merged = merge(existing, FRAGMENT)
    assert existing == original  # the input is not changed in place
    h = the_hcm(merged)
    assert [f["name"] for f in h["http_filters"]] == [lua["name"], EXT_AUTHZ, BUFFER, EXT_PROC, ROUTER["name"]]
    assert all(f["disabled"] for f in h["http_filters"][1:4])  # on only where a product route turns them on
    routes = h["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[-1] == HOME and all(r["name"].startswith("critique_") for r in routes[:-1])
    assert h["stat_prefix"] == "theirs"
    names = [c["name"] for c in merged["static_resources"]["clusters"]]
    assert names[0] == "legacy" and "sidecar_grpc" in names
    assert merge(merged, FRAGMENT) == merged


def path_regexes(node: Any) -> list[str]:
    """Every `:path` regex a local-reply filter tests, at any depth."""
    if isinstance(node, list):
        return [rx for item in node for rx in path_regexes(item)]
    if not isinstance(node, dict):
        return []
    header = node.get("header_filter", {}).get("header", {})
    if header.get("name") == ":path":
        return [header["string_match"]["safe_regex"]["regex"]]
    return [rx for value in node.values() for rx in path_regexes(value)]


def test_every_local_reply_mapper_the_merge_adds_is_scoped_to_the_products_paths() -> None:
    theirs = {"filter": {"status_code_filter": {}}, "body": {"inline_string": "theirs"}}
    existing = bootstrap(listener("web", vhost("api", HOME)))
    the_hcm(existing)["local_reply_config"] = {"mappers": [theirs]}
    mappers = the_hcm(merge(existing, FRAGMENT))["local_reply_config"]["mappers"]
    assert mappers[-1] == theirs and len(mappers) == len(FRAGMENT["local_reply_mappers"]) + 1
    for m in mappers[:-1]:
        regexes = path_regexes(m["filter"])
        assert regexes, m
        for theirs_path in ("/", "/legacy/x", "/api/v2/widgets", "/api/v1", "/api/v1x", "/inference-dashboard/x"):
            assert not any(re.fullmatch(rx, theirs_path) for rx in regexes), (theirs_path, m)
    # The last of the product's mappers claims every other local reply on its paths, as is.
    claim = mappers[-2]
    assert claim["body_format_override"] == {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"}}
    assert "body" not in claim and "status_code" not in claim


def test_no_product_route_answers_by_itself() -> None:
    """CORS and route headers need a route entry: every product route has one."""
    for fragment in (FRAGMENT, build_fragment(load_catalog(), EnvoyOptions(path_prefix="/llm"))):
        assert all("route" in r and "direct_response" not in r for r in fragment["routes"])
    config = build_config(load_catalog())
    vhost = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "route_config"
    ]["virtual_hosts"][0]
    product = [r for r in vhost["routes"] if r["name"] != "critique_not_found"]
    assert all("direct_response" not in r for r in product)


def test_any_method_but_post_on_a_metered_path_has_a_route_of_its_own_without_ext_proc() -> None:
    """So a CORS filter before ours answers a preflight (OPTIONS) alone, and ext_proc never meets
    a response to a request it did not see; without CORS, anything but POST is refused (405) at once."""
    metered = {r["match"]["path"] for r in FRAGMENT["routes"] if EXT_PROC in r.get("typed_per_filter_config", {})}
    assert metered
    for path in metered:
        first = next(r for r in FRAGMENT["routes"] if r["match"].get("path") == path)
        not_post = [{"name": ":method", "string_match": {"exact": "POST"}, "invert_match": True}]
        assert first["match"]["headers"] == not_post
        assert "typed_per_filter_config" not in first


def test_the_products_filters_count_under_their_own_stat_prefix() -> None:
    by_name = {f["name"]: f["typed_config"] for f in FRAGMENT["http_filters"]}
    assert by_name[EXT_AUTHZ]["stat_prefix"] == by_name[EXT_PROC]["stat_prefix"] == "critique"


@pytest.mark.parametrize(
    ("existing", "listener_name", "vhost_name", "message"),
    [
        (
            bootstrap(listener("a", vhost("x", HOME)), listener("b", vhost("y", HOME))),
            None,
            None,
            "several HTTP listeners ('a', 'b'): choose one with --listener NAME or IP:PORT",
        ),
        (bootstrap(listener("a", vhost("x", HOME))), "nope", None, "no listener named or at 'nope'; listeners: 'a'"),
        (
            bootstrap(listener("a", vhost("x", HOME), vhost("y", HOME))),
            None,
            None,
            "2 virtual hosts ('x', 'y'): choose one with --virtual-host NAME",
        ),
        (bootstrap(listener("a", vhost("x", HOME))), None, "z", "no virtual host named 'z'; virtual hosts: 'x'"),
        ({"admin": {}}, None, None, "no static_resources"),
    ],
)
def test_ambiguous_or_missing_targets_are_refused(
    existing: dict[str, Any], listener_name: str | None, vhost_name: str | None, message: str
) -> None:
    with pytest.raises(MergeError) as err:
        merge(existing, FRAGMENT, listener_name, vhost_name)
    assert message in str(err.value)


def uri_template(template: str) -> dict[str, Any]:
    return {
        "path_match_policy": {
            "name": "envoy.path.match.uri_template.uri_template_matcher",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                "path_template": template,
            },
        }
    }


@pytest.mark.parametrize(
    "match",
    [
        {"prefix": "/api/"},
        {"path": "/api/v1/models"},
        {"safe_regex": {"regex": "/api/v[0-9]+/.*"}},
        {"safe_regex": {"regex": "(?i)/API/V1/.+"}},  # RE2 syntax, as Envoy runs it
        {"path_separated_prefix": "/api/settings"},
        {"prefix": "/inference-dash"},
        {"path": "/api/v1/chat"},  # under the API prefix the product claims: never reached
        {"prefix": "/api/v1/files"},
        {"safe_regex": {"regex": "/api/v1/files/.*"}},
        uri_template("/api/v1/models/{id}"),
        {"prefix": "/API/", "case_sensitive": False},
        {"path": "/API/V1/MODELS", "case_sensitive": False},
        {"path_separated_prefix": "/Api/Settings", "case_sensitive": False},
        uri_template("/api/{version}/models"),
        uri_template("/api/v1/**"),
        uri_template("/api/*/chat/{op=**}"),
        uri_template("/{page}-dashboard"),
        # Narrowed by headers or a query parameter: those requests would silently move.
        {"prefix": "/api/", "headers": [{"name": "x-tenant", "string_match": {"exact": "blue"}}]},
        {"prefix": "/api/", "query_parameters": [{"name": "v", "present_match": True}]},
        {"prefix": "/api/", "grpc": {}},
        {"prefix": "/api/", "runtime_fraction": {"default_value": {"numerator": 1}}},
    ],
)
def test_an_existing_route_that_could_take_the_products_paths_is_refused(match: dict[str, Any]) -> None:
    existing = bootstrap(listener("a", vhost("x", {"name": "theirs", "match": match}, HOME)))
    with pytest.raises(MergeError, match="route theirs already matches the product's path"):
        merge(existing, FRAGMENT)


@pytest.mark.parametrize(
    "match",
    [
        {"prefix": "/"},
        {"prefix": ""},
        {"prefix": "/", "case_sensitive": False},
        {"safe_regex": {"regex": ".*"}},
        {"prefix": "/api/v2/"},
        {"path": "/api/v1"},  # not under /api/v1/
        {"path": "/API/V1/MODELS"},  # case-sensitive by default: never /api/v1/models
        {"safe_regex": {"regex": "/API/.*"}},
        uri_template("/api/{version}/widgets"),
        uri_template("/**"),  # a catch-all
        {"connect_matcher": {}},  # CONNECT requests only
    ],
)
def test_catch_alls_and_neighbouring_paths_are_not_conflicts(match: dict[str, Any]) -> None:
    merge(bootstrap(listener("a", vhost("x", {"name": "theirs", "match": match}))), FRAGMENT)


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ({"safe_regex": {"regex": "/api/(?=v1)"}}, "regex '/api/(?=v1)'"),  # RE2 has no lookahead
        ({"path_match_policy": {"name": "their.own.matcher", "typed_config": {}}}, "'their.own.matcher'"),
        ({"headers": [{"name": "x-a", "present_match": True}]}, "no path matcher"),
    ],
)
def test_a_route_the_merge_cannot_read_is_refused_not_guessed(match: dict[str, Any], message: str) -> None:
    existing = bootstrap(listener("a", vhost("x", {"name": "theirs", "match": match}, HOME)))
    with pytest.raises(MergeError, match="route theirs: cannot tell whether it takes the product's paths") as err:
        merge(existing, FRAGMENT)
    assert message in str(err.value)


def unnamed(port: int, *vhosts: dict[str, Any], address: str = "0.0.0.0") -> dict[str, Any]:
    """A listener as Envoy's published examples write them: no name, only an address."""
    return {
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [hcm(list(vhosts))]}],
    }


def test_unnamed_listeners_are_chosen_by_address() -> None:
    existing = bootstrap(unnamed(10000, vhost("backend", HOME)), unnamed(9902, vhost("stats", HOME)))
    with pytest.raises(MergeError) as err:
        merge(existing, FRAGMENT)
    assert "several HTTP listeners (0.0.0.0:10000, 0.0.0.0:9902): choose one with --listener NAME or IP:PORT" in str(
        err.value
    )
    merged = merge(existing, FRAGMENT, "0.0.0.0:10000")
    assert the_hcm(merged, 0)["route_config"]["virtual_hosts"][0]["routes"][0]["name"].startswith("critique_")
    assert the_hcm(merged, 1) == the_hcm(existing, 1)
    with pytest.raises(MergeError, match=re.escape("no listener named or at '0.0.0.0:1'")):
        merge(existing, FRAGMENT, "0.0.0.0:1")
    v6 = bootstrap(unnamed(10000, vhost("backend", HOME), address="::"), unnamed(9902, vhost("s", HOME)))
    assert merge(v6, FRAGMENT, "[::]:10000") == merge(copy.deepcopy(v6), FRAGMENT, "[::]:10000")
    with pytest.raises(MergeError, match=r"listeners: \[::\]:10000, 0.0.0.0:9902"):
        merge(v6, FRAGMENT, "::10000")


def test_remerging_into_another_virtual_host_or_listener_moves_the_product() -> None:
    existing = bootstrap(listener("a", vhost("x", HOME), vhost("y", HOME)), listener("b", vhost("z", HOME)))
    the_hcm(existing)["local_reply_config"] = {"mappers": [{"filter": {}, "body": {"inline_string": "theirs"}}]}
    into_x = merge(existing, FRAGMENT, "a", "x")
    into_y = merge(into_x, FRAGMENT, "a", "y")
    assert into_y == merge(existing, FRAGMENT, "a", "y")
    x_routes = the_hcm(into_y)["route_config"]["virtual_hosts"][0]["routes"]
    assert x_routes == [HOME]
    into_b = merge(into_y, FRAGMENT, "b", "z")
    assert into_b == merge(existing, FRAGMENT, "b", "z")
    assert the_hcm(into_b) == the_hcm(existing)  # listener a is as it was before any merge


def test_a_cluster_of_theirs_with_the_products_name_is_refused_not_replaced() -> None:
    existing = bootstrap(listener("a", vhost("x", HOME)))
    existing["static_resources"]["clusters"].append({"name": "sidecar_grpc"})
    with pytest.raises(MergeError, match="a cluster named 'sidecar_grpc' already exists"):
        merge(existing, FRAGMENT)


def test_rds_and_routerless_connection_managers_are_refused() -> None:
    rds = bootstrap(listener("a", vhost("x", HOME)))
    del the_hcm(rds)["route_config"]
    the_hcm(rds)["rds"] = {"route_config_name": "r"}
    with pytest.raises(MergeError, match="takes its routes from RDS"):
        merge(rds, FRAGMENT)
    no_router = bootstrap(listener("a", vhost("x", HOME)))
    the_hcm(no_router)["http_filters"] = []
    with pytest.raises(MergeError, match="no router filter"):
        merge(no_router, FRAGMENT)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--listen", "8080", "--listen '8080': expected HOST:PORT"),
        ("--listen", "localhost:8080", "Envoy listens on an IP address, not a host name"),
        ("--listen", "::1:8080", "write an IPv6 address in brackets"),
        ("--listen", "127.0.0.1:70000", "a port from 1 to 65535"),
        ("--admin", "admin:9901", "--admin 'admin:9901': Envoy listens on an IP address"),
        ("--stat-prefix", "my prefix", "--stat-prefix 'my prefix'"),
        ("--sidecar-grpc", "sidecar", "--sidecar-grpc 'sidecar': expected HOST:PORT"),
        ("--sidecar-tls-cert", "/c.pem", "need --sidecar-tls-ca"),
    ],
)
def test_envoy_config_refuses_what_envoy_would_reject(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["envoy-config", flag, value]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_ipv6_listen_address_is_written_without_brackets() -> None:
    from critique_sidecar.envoy.config import build_config

    config = build_config(load_catalog(), EnvoyOptions(listen="[::]:8080"))
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"] == {
        "address": "::",
        "port_value": 8080,
    }
    with pytest.raises(EnvoyOptionError):
        EnvoyOptions(admin="[::1]")
