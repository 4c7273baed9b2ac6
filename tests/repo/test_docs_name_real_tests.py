"""Every test the README and docs/ name exists, so a renamed or deleted test cannot leave a
document vouching for behaviour nothing checks any more.

A name in backticks or plain text that starts with `test_` is either a test module
(`test_journal.py`, `test_faults_*.py`), a test function (`test_malformed_json_is_400`,
`file.py::test_x`), or a prefix ending in `_...` that at least one test function starts with."""

from __future__ import annotations

import ast
import re

from critique_sidecar.devtools.stack import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NAME = re.compile(r"\btest_[A-Za-z0-9_*]*(?:\.py)?(?:\.\.\.)?")


def _test_functions() -> set[str]:
    names = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def _exists(name: str, modules: set[str], functions: set[str]) -> bool:
    if name.endswith(".py") or "*" in name:
        pattern = re.compile(re.escape(name.removesuffix(".py")).replace(r"\*", ".*") + r"\Z")
        return any(pattern.match(m) for m in modules)
    if name.endswith("..."):
        prefix = name.removesuffix("...")
        return any(f.startswith(prefix) for f in functions) or any(m.startswith(prefix) for m in modules)
    return name in functions or name in modules


def test_every_test_the_docs_name_exists() -> None:
    modules = {p.stem for p in (REPO / "tests").rglob("test_*.py")}
    functions = _test_functions()
    named = {(doc.name, m.group()) for doc in DOCS for m in NAME.finditer(doc.read_text())}
    assert len(named) > 20  # the docs do name tests: a broken pattern must not pass vacuously
    missing = sorted(f"{doc}: {name}" for doc, name in named if not _exists(name, modules, functions))
    assert not missing, "documents name tests that do not exist:\n" + "\n".join(missing)


def test_the_check_itself_sees_a_missing_test() -> None:
    modules, functions = {"test_journal"}, {"test_malformed_json_is_400"}
    assert _exists("test_journal.py", modules, functions) and _exists("test_malformed_json_...", modules, functions)
    assert not _exists("test_duplicate_json_keys_...", modules, functions)
    assert not _exists("test_no_such_thing", modules, functions)
