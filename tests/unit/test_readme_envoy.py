"""docs/envoy.md, "Wiring it into an existing Envoy": its example bootstrap, merged with `envoy-merge`
and by hand from `envoy-config --fragment` as the document says, gives the same config, which the
real Envoy validates."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from critique_sidecar import cli
from critique_sidecar.devtools.stack import REPO, envoy_binary

SECTION = (REPO / "docs" / "envoy.md").read_text()


def readme_bootstrap() -> str:
    [block] = re.findall(r"```yaml\n(.*?)```", SECTION, re.S)
    return str(block)


def by_hand(existing: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """What docs/envoy.md tells a reader to do with the fragment."""
    [listener] = existing["static_resources"]["listeners"]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    router = [f["name"] for f in hcm["http_filters"]].index("envoy.filters.http.router")
    hcm["http_filters"][router:router] = fragment["http_filters"]
    [vhost] = hcm["route_config"]["virtual_hosts"]
    vhost["routes"][:0] = fragment["routes"]
    hcm.setdefault("local_reply_config", {}).setdefault("mappers", [])[:0] = fragment["local_reply_mappers"]
    existing["static_resources"]["clusters"] += fragment["clusters"]
    return existing


def test_the_readme_bootstrap_merged_both_ways_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "envoy.yaml"
    source.write_text(readme_bootstrap())
    assert cli.main(["envoy-merge", str(source)]) == 0
    merged = yaml.safe_load(capsys.readouterr().out)
    assert cli.main(["envoy-config", "--fragment"]) == 0
    hand = by_hand(yaml.safe_load(readme_bootstrap()), yaml.safe_load(capsys.readouterr().out))
    for c in merged["static_resources"]["clusters"]:
        c.pop("metadata", None)  # the merge's marker (so a later merge recognises its clusters)
    assert merged == hand
    assert "envoy-merge /etc/envoy/envoy.yaml --listener public --virtual-host api" in SECTION
    for name, doc in (("merged", merged), ("by-hand", hand)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        out = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], capture_output=True, text=True)
        assert out.returncode == 0 and "OK" in out.stdout, f"{name}: {out.stderr[-1500:]}"
