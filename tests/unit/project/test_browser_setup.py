"""The browser tests' prerequisites are installed by the project's own files: scripts/bootstrap brings Debian's
chromium and a CJK font, and requirements.lock pins playwright (its own browser download is never used)."""

from __future__ import annotations

import re

from tests.support import REPO


def test_bootstrap_installs_chromium_and_a_cjk_font() -> None:
    script = (REPO / "scripts" / "bootstrap").read_text(encoding="utf-8")
    assert "need+=(chromium)" in script
    assert re.search(r"need\+=\(fonts-(wqy-microhei|noto-cjk)\)", script)


def test_playwright_is_pinned_with_hashes_in_the_lock() -> None:
    lock = (REPO / "requirements.lock").read_text(encoding="utf-8")
    assert re.search(r"^playwright==1\.\d+\.\d+ \\\n    --hash=sha256:", lock, re.MULTILINE)
