"""docs/design.md's error table is the one error table, and it is the code's: every code of
core/errors.ERROR_TABLE is a row with its status and type, no row names a code the code lacks,
and the retry headers a row promises are the ones core/limits.py sends."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from critique_sidecar.core.errors import ERROR_TABLE
from critique_sidecar.core.limits import retry_headers

REPO = Path(__file__).resolve().parents[2]


def rows() -> dict[str, tuple[int, str, str]]:
    """code -> (status, type, headers column) from the table under docs/design.md's "## Errors"."""
    text = (REPO / "docs" / "design.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    found: dict[str, tuple[int, str, str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[1].isdigit():
            continue
        code = cells[4].strip("`")
        assert code not in found, f"{code} has two rows"
        found[code] = (int(cells[1]), cells[2].strip("`"), cells[3])
    return found


def test_every_code_is_a_row_with_its_status_and_type() -> None:
    table = rows()
    assert set(table) == set(ERROR_TABLE)
    for code, (status, kind) in ERROR_TABLE.items():
        assert table[code][:2] == (status, kind), code


def test_the_headers_column_is_what_is_sent() -> None:
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    for code, (_, _, headers) in rows().items():
        sent = retry_headers(code, now)
        assert ("x-should-retry: false" in headers) == (sent.get("x-should-retry") == "false") or (
            code == "rate_limit_exceeded"  # only when the request can never fit (core/limits.rate_refusal)
        ), code
        assert ("Retry-After" in headers) == ("retry-after" in sent or code == "rate_limit_exceeded"), code


def test_no_other_document_repeats_the_table() -> None:
    codes = "|".join(re.escape(c) for c in ERROR_TABLE)
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        if path.name == "design.md":
            continue
        table_rows = [line for line in path.read_text().splitlines() if re.match(rf"\|.*\| `({codes})` \|$", line)]
        assert len(table_rows) < 3, f"{path.name} repeats the error table: link to docs/design.md#errors"
