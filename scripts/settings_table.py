#!/usr/bin/env python3
"""Rewrite the README's settings table from lastmile/settings.py (tests/unit/test_readme.py checks it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lastmile.settings import documented

README = Path(__file__).resolve().parents[1] / "README.md"
START = "<!-- settings-table: generated from lastmile/settings.py; tests/unit/test_readme.py checks it -->"
END = "<!-- /settings-table -->"


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{env}` | `{default}` | {help_} |" for env, default, help_ in documented()]
    return "\n".join(rows)


def main() -> None:
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), flags=re.DOTALL)
    README.write_text(pattern.sub(lambda _: f"{START}\n{table()}\n{END}", text), encoding="utf-8")


if __name__ == "__main__":
    main()
