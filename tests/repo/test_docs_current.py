"""Generated artefacts must match their sources: the configuration table (docs/operations.md) and envoy.yaml."""

from __future__ import annotations

from critique_sidecar.config_doc import config_table, doc_section
from critique_sidecar.core.catalog import load_catalog
from critique_sidecar.devtools.stack import REPO
from critique_sidecar.envoy.config import render


def test_readme_configuration_table_matches_settings() -> None:
    assert doc_section((REPO / "docs" / "operations.md").read_text()) == config_table(), "run `make docs`"


def test_committed_envoy_yaml_is_generated_from_the_catalog() -> None:
    assert (REPO / "envoy.yaml").read_text() == render(load_catalog()), "run `make envoy-config`"
