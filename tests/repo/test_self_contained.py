"""The repo stands alone: its README and docs never point outside it, and their relative links
resolve to files in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from critique_sidecar.devtools.stack import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
OUTSIDE = re.compile(r"\.\./shared|/work/")  # the team's brief lives beside the repo, never in it
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_point_only_inside_the_repo(doc: Path) -> None:
    text = doc.read_text()
    assert not OUTSIDE.search(text)
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        resolved = (doc.parent / target).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), f"{doc.name}: broken link {target}"
