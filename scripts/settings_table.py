#!/usr/bin/env python3
"""Rewrite the settings table of docs/settings.md from lastmile/settings.py (tests/unit/project/test_docs.py
checks it). Run it with the project's venv, where the project is installed: .venv/bin/python scripts/settings_table.py
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from lastmile.settings import documented

PAGE = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
START = "<!-- settings-table: generated from lastmile/settings.py; tests/unit/project/test_docs.py checks it -->"
END = "<!-- /settings-table -->"


EMPTY = "(empty)"


def table() -> str:
    """One row per setting: the variable, its default as code (or ``(empty)``), the help text with ``<`` and ``>``
    escaped so that Markdown shows ``{"<token>": ...}`` rather than taking it for an HTML tag."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for env, default, help_ in documented():
        shown = f"`{default}`" if default else EMPTY
        rows.append(f"| `{env}` | {shown} | {html.escape(help_, quote=False)} |")
    return "\n".join(rows)


def main() -> None:
    text = PAGE.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), flags=re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{PAGE}: no settings table markers ({START} ... {END})")
    PAGE.write_text(pattern.sub(lambda _: f"{START}\n{table()}\n{END}", text), encoding="utf-8")


if __name__ == "__main__":
    main()
