"""The README's settings table is the settings module's, row for row."""

from __future__ import annotations

import re
from pathlib import Path

from lastmile.settings import documented

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_settings_table_lists_every_setting_with_its_default() -> None:
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- settings-table", 1)[1].split("<!-- /settings-table -->", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \| (.+) \|$", table, flags=re.MULTILINE)
    assert rows == list(documented())
