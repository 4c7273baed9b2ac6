"""--path-prefix on envoy-config, its fragment and envoy-merge: every product route is under the
prefix, the sidecar and model servers get the unprefixed path, the scoped local replies and the
merge's conflict check follow the prefix, and bad prefixes are refused. (Through the real Envoy:
tests/e2e/test_dropin_merge.py.)"""

from __future__ import annotations

import re
from typing import Any

import pytest

from critique_sidecar import cli
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.core.endpoints import ENDPOINTS
from critique_sidecar.core.wire import ROUTE_PATH_CONTEXT
from critique_sidecar.envoy.config import (
    EXT_AUTHZ,
    PRODUCT_PATHS,
    EnvoyOptionError,
    EnvoyOptions,
    build_config,
    build_fragment,
)
from critique_sidecar.envoy.merge import MergeError, merge
from critique_sidecar.envoy.replies import NO_HOSTS_CLUSTER

from .test_envoy_merge import HOME, bootstrap, listener, path_regexes, the_hcm, vhost

CATALOG = load_catalog()
LLM = EnvoyOptions(path_prefix="/llm")


def matched(route: dict[str, Any]) -> str:
    """The path or prefix a route matches."""
    return str(route["match"].get("path") or route["match"]["prefix"])


def test_every_product_route_is_under_the_prefix_and_forwards_the_products_own_path() -> None:
    routes = build_fragment(CATALOG, LLM)["routes"]
    assert {r["match"]["path"] for r in routes if "path" in r["match"]} == {"/llm" + p for p in PRODUCT_PATHS}
    # and nothing else under its API: the prefixes it claims are refused there, not elsewhere
    assert {r["match"]["prefix"] for r in routes if "prefix" in r["match"]} == {
        "/llm/api/v1/",
        "/llm/api/v1/responses/",
        "/llm/api/v1/messages/",
    }
    forwarded = [r for r in routes if r.get("route", {}).get("cluster") != NO_HOSTS_CLUSTER]
    to_sidecar = [r for r in forwarded if r["route"]["cluster"] == "sidecar_http"]
    assert to_sidecar and all(r["route"]["prefix_rewrite"] == r["match"]["path"][len("/llm") :] for r in to_sidecar)
    # model routes: the endpoint's path on the model server's base URL, prefix or not
    to_models = [r for r in forwarded if r not in to_sidecar]
    served = {e.suffix for e in ENDPOINTS if any(e.name in m.endpoints for m in CATALOG.models)}
    assert to_models and {r["route"]["prefix_rewrite"] for r in to_models} == {"/v1" + s for s in served}


def test_ext_authz_is_told_the_unprefixed_path_on_every_route_that_runs_it() -> None:
    for opts in (LLM, EnvoyOptions(path_prefix="/llm", chat_auth="ext_authz")):
        authz_routes = [
            r for r in build_fragment(CATALOG, opts)["routes"] if EXT_AUTHZ in r.get("typed_per_filter_config", {})
        ]
        assert authz_routes
        for r in authz_routes:
            check = r["typed_per_filter_config"][EXT_AUTHZ]["config"]["check_settings"]
            assert check["context_extensions"] == {ROUTE_PATH_CONTEXT: r["match"]["path"][len("/llm") :]}


def test_without_a_prefix_the_config_is_unchanged() -> None:
    plain = build_config(CATALOG, EnvoyOptions())
    listener_routes = plain["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    rewrites = [
        r
        for r in listener_routes["route_config"]["virtual_hosts"][0]["routes"]
        if "prefix_rewrite" in r.get("route", {})
    ]
    assert rewrites and all(r["route"]["cluster"].startswith("upstream_") for r in rewrites)  # model routes only
    assert ROUTE_PATH_CONTEXT not in str(plain)
    assert build_config(CATALOG, EnvoyOptions(path_prefix="")) == plain


def _mapper_regexes(mappers: list[dict[str, Any]]) -> list[str]:
    return [rx for m in mappers for rx in path_regexes(m["filter"])]


def test_scoped_local_replies_match_the_prefixed_paths_only() -> None:
    regexes = _mapper_regexes(build_fragment(CATALOG, LLM)["local_reply_mappers"])
    assert regexes
    for path in ("/llm/api/v1/chat/completions", "/llm/api/v1/models?x=1", "/llm/inference-dashboard"):
        assert any(re.fullmatch(r, path) for r in regexes), path
    for path in ("/api/v1/chat/completions", "/api/v1/models", "/inference-dashboard", "/llmapi/v1/models"):
        assert not any(re.fullmatch(r, path) for r in regexes), path


def test_merge_conflicts_follow_the_prefix() -> None:
    fragment = build_fragment(CATALOG, LLM)
    theirs_at_api = {"name": "their_api", "match": {"prefix": "/api/"}, "route": {"cluster": "legacy"}}
    merge(bootstrap(listener("a", vhost("x", theirs_at_api, HOME))), fragment)  # no longer ours
    for match in ({"prefix": "/llm/"}, {"path": "/llm/api/v1/models"}, {"prefix": "/llm/api/"}):
        existing = bootstrap(listener("a", vhost("x", {"name": "theirs", "match": match}, HOME)))
        with pytest.raises(MergeError, match="route theirs already matches the product's path /llm/api/"):
            merge(existing, fragment)


def test_remerging_with_another_prefix_replaces_the_products_routes_and_mappers() -> None:
    theirs = {"filter": {"status_code_filter": {}}, "body": {"inline_string": "theirs"}}
    existing = bootstrap(listener("web", vhost("api", HOME)))
    the_hcm(existing)["local_reply_config"] = {"mappers": [theirs]}
    plain = merge(existing, build_fragment(CATALOG))
    fragment = build_fragment(CATALOG, LLM)
    prefixed = merge(plain, fragment)
    assert prefixed == merge(existing, fragment)
    h = the_hcm(prefixed)
    assert h["local_reply_config"]["mappers"][-1] == theirs
    assert len(h["local_reply_config"]["mappers"]) == len(fragment["local_reply_mappers"]) + 1
    assert merge(prefixed, fragment) == prefixed


@pytest.mark.parametrize(
    "prefix", ["llm", "/llm/", "/", "/a//b", "/a b", "/l%20m", "/a/../b", "/./x", "/llm?x", "/llm#"]
)
def test_bad_prefixes_are_refused_with_one_line(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(EnvoyOptionError):
        EnvoyOptions(path_prefix=prefix)
    for command in (["envoy-config"], ["envoy-config", "--fragment"], ["envoy-merge", "/nonexistent.yaml"]):
        assert cli.main([*command, "--path-prefix", prefix]) == 2
        err = capsys.readouterr().err
        assert f"--path-prefix {prefix!r}: expected a path such as /llm" in err and err.count("\n") == 1


@pytest.mark.parametrize("prefix", ["/llm", "/ai/v2", "/A-b_c.d~e"])
def test_good_prefixes_are_accepted(prefix: str) -> None:
    routes = build_fragment(CATALOG, EnvoyOptions(path_prefix=prefix))["routes"]
    assert all(matched(r).startswith(prefix + "/") for r in routes)


def _check(path: str, key: str | None, routed_as: str | None = None) -> Any:
    from envoy.service.auth.v3 import external_auth_pb2 as pb

    request = pb.CheckRequest()
    request.attributes.request.http.method = "GET"
    request.attributes.request.http.path = path
    if key:
        request.attributes.request.http.headers["authorization"] = f"Bearer {key}"
    if routed_as:
        request.attributes.context_extensions[ROUTE_PATH_CONTEXT] = routed_as
    return request


async def test_ext_authz_guards_the_path_the_route_names_not_the_clients() -> None:
    from critique_sidecar.core.auth import Authenticator
    from critique_sidecar.core.keys import generate_key
    from critique_sidecar.envoy.authz import AuthorizationServicer

    from ..fakes import MemoryKeys

    keys = MemoryKeys()
    key = generate_key()
    keys.put(key, scopes=("write:inference",))  # no read scope: the models list is refused
    servicer = AuthorizationServicer(Authenticator(keys))
    ctx: Any = None
    # Unnamed, /llm/api/v1/models is no route the sidecar guards; named, it is the models list.
    assert (await servicer.Check(_check("/llm/api/v1/models", None), ctx)).HasField("ok_response")
    denied = await servicer.Check(_check("/llm/api/v1/models?x=1", None, "/api/v1/models"), ctx)
    assert denied.denied_response.status.code == 401
    forbidden = await servicer.Check(_check("/llm/api/v1/models", key, "/api/v1/models"), ctx)
    assert forbidden.denied_response.status.code == 403


def test_the_dashboard_page_calls_the_api_relative_to_itself() -> None:
    """Under a prefix the page is /llm/inference-dashboard: a call to an absolute /api/... would
    take the customer's key to whatever else the operator serves at /api/."""
    from importlib import resources

    page = resources.files("critique_sidecar").joinpath("web/static/inference-dashboard.html").read_text("utf-8")
    literals = re.findall(r'"(/?api/[^"]*)"', page)
    assert literals and all(not lit.startswith("/") for lit in literals), literals
