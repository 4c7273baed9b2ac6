"""The configuration reference table, generated from the Config model (so it cannot drift:
a test compares it with the table in docs/operations.md)."""

from __future__ import annotations

from .config import Config

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"


def config_table() -> str:
    rows = ["| Environment variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Config.model_fields.items():
        default = field.default
        shown = "(built-in)" if default is None else "(unset)" if default == "" else f"`{default}`"
        rows.append(f"| `CRITIQUE_{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


def doc_section(text: str) -> str:
    """The table as it currently stands in a document (between the markers)."""
    return text.split(START, 1)[1].split(END, 1)[0].strip()
